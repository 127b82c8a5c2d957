"""Self-distilled text chat for training the SmolLM2 audio model's decoder (LoRA) without
losing SmolLM2-Instruct's own chat.

A LoRA stage changes the decoder, so a text-only prompt no longer reaches SmolLM2-Instruct's
untouched weights. Mixing in text-only items whose targets are the untouched model's own greedy
answers (self-distillation) pulls the adapted decoder back to them. `chat_prompts` draws varied
questions from templates (facts, definitions, arithmetic, word questions, advice, short writing)
with a seed, leaving out the questions a caller evaluates on (`exclude`: e.g. `EVAL_QUESTIONS`,
the 50 of scripts/smollm_eval.py, so the bar measures chat on prompts training never showed);
`distill_chat` answers them greedily with a model and writes the finished answers (those that
end in a stop token within the budget) as a lalm manifest of ``text_chat`` items.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lalm.data.manifest import Example, ExampleTask, ExampleTurn, write_manifest
from lalm.errors import ConfigError

#: The 50 fixed text-only questions of the chat bar (scripts/smollm_eval.py): facts,
#: definitions, arithmetic, advice, short writing. Training prompts must not be among them.
EVAL_QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?", "What is the capital of Japan?",
    "What is the capital of Italy?", "What is the largest planet in the solar system?",
    "What is the boiling point of water in Celsius?", "How many days are in a week?",
    "How many legs does a spider have?", "What color is the sky on a clear day?",
    "Who wrote Romeo and Juliet?", "What is photosynthesis?", "What is gravity?",
    "What is the chemical symbol for gold?", "What is 2 plus 2?", "What is 10 times 3?",
    "What is the square root of 81?", "Name three primary colors.",
    "What is the opposite of hot?", "What language is spoken in Spain?",
    "What is a noun?", "What is the main ingredient of bread?",
    "Give me a tip for sleeping better.", "How can I stay focused while studying?",
    "What should I pack for a beach trip?", "How do I make a cup of tea?",
    "Write a haiku about the sea.", "Write one sentence about autumn.",
    "Suggest a name for a pet cat.", "What is the freezing point of water in Fahrenheit?",
    "What is the tallest mountain on Earth?", "What is the longest river in the world?",
    "What do bees make?", "What is the speed of light?", "What is DNA?",
    "What is an atom?", "Why do leaves change color in the fall?",
    "What is the difference between weather and climate?", "What is a prime number?",
    "Is 17 a prime number?", "What is the plural of mouse?", "Translate 'thank you' into French.",
    "What is the past tense of run?", "What is a synonym for happy?",
    "How many continents are there?", "What is the smallest ocean?",
    "Who painted the Mona Lisa?", "What is the currency of the United Kingdom?",
    "What is machine learning?", "What is a computer?", "Tell me a fun fact about dolphins.",
    "What are the benefits of drinking water?",
)
assert len(EVAL_QUESTIONS) == 50 and len(set(EVAL_QUESTIONS)) == 50

_ANIMALS = ("cat dog horse cow owl eagle shark whale frog snake rabbit fox wolf bear tiger "
            "lion penguin octopus ant butterfly").split()
_THINGS = ("bicycle telescope volcano rainbow glacier battery magnet compass piano guitar "
           "library bridge desert forest island calendar candle mirror umbrella clock").split()
_IDEAS = ("friendship democracy electricity evolution inflation recycling erosion energy "
          "friction history music poetry geometry algebra nutrition exercise").split()
_COUNTRIES = ("Germany Spain Canada Egypt Brazil India China Kenya Norway Mexico Peru Greece "
              "Portugal Sweden Australia Argentina Turkey Poland Ireland Chile").split()
_WORDS = ("hello goodbye please water friend house book cat morning night").split()
_LANGUAGES = ("French Spanish German Italian").split()
_ADJECTIVES = ("big fast happy old bright strong quiet early cold easy").split()
_ACTIVITIES = ("saving money", "learning a language", "cooking rice", "running a marathon",
               "writing an essay", "keeping a plant alive", "making friends", "reading more")
_TASKS = ("boil an egg", "tie a tie", "plant a tree", "write a letter", "learn to swim",
          "clean a window", "make a salad", "start a journal", "fold a shirt", "bake cookies")

#: (template, slot values): every template filled with every value is the prompt pool.
_TEMPLATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is a {}?", tuple(_THINGS)),
    ("Tell me a fun fact about the {}.", tuple(_ANIMALS)),
    ("Where does the {} live?", tuple(_ANIMALS)),
    ("Write one sentence about the {}.", tuple(_THINGS)),
    ("Explain {} in one sentence.", tuple(_IDEAS)),
    ("What is the capital of {}?", tuple(_COUNTRIES)),
    ("What language is spoken in {}?", tuple(_COUNTRIES)),
    ("Translate '{}' into {}.", tuple(f"{w}|{lang}" for w in _WORDS for lang in _LANGUAGES)),
    ("What is the opposite of {}?", tuple(_ADJECTIVES)),
    ("What is a synonym for {}?", tuple(_ADJECTIVES)),
    ("What is the plural of {}?", tuple(_ANIMALS)),
    ("Give me a tip for {}.", _ACTIVITIES),
    ("How do I {}?", _TASKS),
    ("What is {} plus {}?", tuple(f"{a}|{b}" for a, b in itertools.product(range(3, 40, 7),
                                                                            range(2, 30, 6)))),
    ("What is {} times {}?", tuple(f"{a}|{b}" for a, b in itertools.product(range(2, 10, 2),
                                                                             range(3, 12, 3)))),
)


def _fill(template: str, value: str) -> str:
    return template.format(*value.split("|"))


def prompt_pool(exclude: Collection[str] = ()) -> list[str]:
    """Every prompt of the templates, sorted, less `exclude`."""
    return sorted({_fill(t, v) for t, values in _TEMPLATES for v in values} - set(exclude))


def chat_prompts(count: int, seed: int = 0, exclude: Collection[str] = ()) -> list[str]:
    """`count` distinct prompts drawn (seeded, without repetition) from `prompt_pool`,
    none of them in `exclude`, in the order drawn.

    Raises:
        ConfigError: the pool (less `exclude`) has fewer than `count` prompts.
    """
    pool = prompt_pool(exclude)
    if count > len(pool):
        raise ConfigError(f"chat_prompts: {count} asked, the template pool has {len(pool)}")
    order = np.random.default_rng(seed).permutation(len(pool))[:count]
    return [pool[int(i)] for i in order]


def chat_examples(prompts: Iterable[str], answers: Iterable[str]) -> list[Example]:
    """Text-only ``text_chat`` training items: one user turn (the prompt), the answer as the
    assistant turn and target; ids ``chat-distill-NNNNN`` in order."""
    examples = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        task = ExampleTask("text_chat", None, "en", instruction=prompt, question=prompt)
        examples.append(Example(
            f"chat-distill-{i:05d}", (), task, answer,
            messages=(ExampleTurn("user", prompt), ExampleTurn("assistant", answer)),
            metadata={"source": "self-distilled"}))
    return examples


def distill_chat(model_dir: Path, out: Path, prompts: list[str], max_new_tokens: int = 128,
                 batch_size: int = 16) -> dict[str, Any]:
    """Answer `prompts` greedily with the model at `model_dir` (its own precision choice, as
    scripts/smollm_eval.py runs it) and write the answers that finished (a stop token within
    `max_new_tokens`, some text before it) as a manifest at `out` (`chat_examples`).

    Returns:
        ``{"prompts": asked, "kept": written, "cut": answers dropped at the budget}``.
    """
    from lalm.generation import GenerationOptions, Pipeline

    pipe = Pipeline.from_pretrained(model_dir)
    results = pipe.generate([pipe.chat_request(p) for p in prompts],
                            GenerationOptions(max_new_tokens=max_new_tokens),
                            batch_size=batch_size)
    kept = [(p, r.text) for p, r in zip(prompts, results)
            if r.finish_reason == "stop" and r.text.strip()]
    write_manifest(out, chat_examples([p for p, _ in kept], [a for _, a in kept]))
    return {"prompts": len(prompts), "kept": len(kept), "cut": len(prompts) - len(kept)}
