"""Self-distilled text chat (lalm.smollm_chat): the prompts, the items and their answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lalm.data.manifest import read_manifest
from lalm.errors import ConfigError
from lalm.generation import GenerationOptions, Pipeline
from lalm.smollm_chat import (EVAL_QUESTIONS, chat_examples, chat_prompts, distill_chat,
                              prompt_pool)
from lalm.testing.server import save_tiny_checkpoint
from lalm.tokenizer import Tokenizer



def test_prompts_are_distinct_seeded_and_never_the_evaluation_questions() -> None:
    prompts = chat_prompts(240, 0, EVAL_QUESTIONS)
    assert len(set(prompts)) == 240
    assert not set(prompts) & set(EVAL_QUESTIONS)
    assert chat_prompts(240, 0, EVAL_QUESTIONS) == prompts
    assert chat_prompts(240, 1, EVAL_QUESTIONS) != prompts
    # the templates do make some of them: the exclusion is what keeps them out
    assert "What language is spoken in Spain?" in set(prompt_pool()) & set(EVAL_QUESTIONS)
    assert "What language is spoken in Spain?" not in prompt_pool(EVAL_QUESTIONS)
    with pytest.raises(ConfigError, match="template pool has"):
        chat_prompts(len(prompt_pool()) + 1)


def test_examples_are_text_chat_turns_with_the_answer_as_target(tmp_path: Path) -> None:
    items = chat_examples(["What is a cat?", "Hi?"], ["An animal.", "Hello."])
    assert [e.id for e in items] == ["chat-distill-00000", "chat-distill-00001"]
    first = items[0]
    assert first.task.name == "text_chat" and first.audios == () and first.target == "An animal."
    assert [(m.role, m.text) for m in first.messages] == [("user", "What is a cat?"),
                                                          ("assistant", "An animal.")]
    with pytest.raises(ValueError):
        chat_examples(["a", "b"], ["only one"])


def test_distilled_answers_are_the_models_own_finished_greedy_answers(
        tmp_path: Path, qwen2_tokenizer_dir: Path) -> None:
    model = save_tiny_checkpoint(tmp_path / "tiny", qwen2_tokenizer_dir)
    # a random model almost never stops: a larger <|im_end|> row of its LM head makes it stop
    # on some prompts and run to the budget on others
    weights = next(model.glob("*.safetensors"))
    state = load_file(str(weights))
    im_end = Tokenizer.from_hf(model).im_end_id
    state["language_model.lm_head.weight"][im_end] *= 8
    save_file(state, str(weights), metadata={"format": "pt"})
    prompts = chat_prompts(8, 0, EVAL_QUESTIONS)
    out = tmp_path / "chat.jsonl"
    facts = distill_chat(model, out, prompts, max_new_tokens=6, batch_size=4)
    pipe = Pipeline.from_pretrained(model)
    alone = [pipe.chat(p, [], GenerationOptions(max_new_tokens=6)) for p in prompts]
    finished = [(p, r.text) for p, r in zip(prompts, alone) if r.finish_reason == "stop" and r.text.strip()]
    written = read_manifest(out)
    assert 0 < len(finished) < len(prompts)  # both kinds were met
    assert facts == {"prompts": 8, "kept": len(finished), "cut": 8 - len(finished)}
    assert [(e.task.instruction, e.target) for e in written] == finished
