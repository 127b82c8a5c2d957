"""Render an `Example` (lalm-synth's or any manifest's) into a family's prompt and target,
through `lalm.prompt`: what the dataset trains on, the trainer validates on and the evaluator
asks.

The record stores the task as typed fields; this module maps them onto lalm.prompt's v1 task
specs (Qwen-Audio hierarchical tags) and chat messages (Qwen-Audio-Chat and Qwen2-Audio-Instruct
ChatML). No tag string is written here.

* a family with task tags (`FamilySpec.task_tags`: v1): ASR, S2TT, SRWT, captioning and open
  scene classification use the official task prompts; every other audio task is a ``question``
  prompt whose question is the item's instruction (choices included); chat tasks use the
  family's chat format (Qwen-Audio-Chat).
* the others (Qwen2-Audio): the family's chat (Qwen2-Audio-Instruct) with the natural-language
  instruction (or the item's own turns for chat tasks); word times as plain text.
"""

from __future__ import annotations

from pathlib import Path

from lalm import prompt as P
from lalm.data.manifest import Example


def v1_task_spec(example: Example) -> P.TaskSpec | None:
    """The v1 tag prompt of an example; None for chat tasks and text-only items (they use the
    chat format: a v1 tag prompt starts with an audio)."""
    t = example.task
    if example.messages or not example.audios:
        return None
    if t.name == "asr":
        return P.TaskSpec.asr(t.audio_language or P.UNKNOWN_LANGUAGE)
    if t.name == "s2tt":
        return P.TaskSpec.s2tt(t.audio_language or P.UNKNOWN_LANGUAGE, t.output_language)
    if t.name == "srwt":
        return P.TaskSpec.srwt(t.audio_language or P.UNKNOWN_LANGUAGE)
    if t.name == "mixed_caption":
        return P.TaskSpec.aac(P.Instruction.CAPTION_PLAIN)
    if t.name == "acoustic_scene" and not t.choices:
        return P.TaskSpec.scene()
    # a language-ID question must not name its answer in the audio-language tag
    language = None if t.name == "language_id" else t.audio_language
    return P.TaskSpec(P.Task.QUESTION, language or P.UNKNOWN_LANGUAGE, question=t.instruction)


def task_spec(example: Example, family: P.FamilySpec) -> P.TaskSpec | None:
    """The tag prompt an example has in ``family``: `v1_task_spec` where the family has task
    tags, else None (the family's chat)."""
    return v1_task_spec(example) if family.task_tags else None


def _messages(example: Example, audio_root: Path) -> list[P.Message]:
    """The conversation up to the answer: the item's turns (each audio where it stands in its
    turn), or one user turn."""
    audios = [P.AudioPart(str(audio_root / a.path), name=a.path) for a in example.audios]
    turns = example.messages[:-1] if example.messages else ()
    if not turns:
        return [P.Message("user", (*audios, P.TextPart(example.task.instruction)))]
    return [P.Message(m.role, tuple(P.TextPart(p) if isinstance(p, str) else audios[p]
                                    for p in m.pieces())) for m in turns]


def render_prompt(example: Example, family: P.FamilySpec | str,
                  audio_root: str | Path = ".") -> P.Prompt:
    """The prompt (up to where the model writes) for one family.

    Args:
        example: the item.
        family: the `FamilySpec` (or its name): v1 tags / v1 chat, or the family's chat.
        audio_root: folder the example's relative audio paths start from.
    """
    root = Path(audio_root)
    family = P.family_spec(family)
    spec = task_spec(example, family)
    if spec is not None:
        audio = example.audios[0]
        return P.build_prompt(spec, P.AudioPart(str(root / audio.path), name=audio.path))
    return P.build_chat_prompt(_messages(example, root), family)


def render_target(example: Example, family: P.FamilySpec | str) -> str:
    """What the model should write after the prompt: the target, or for timestamped tasks the
    timed words: v1 as timestamp tags (the prompt already primes ``<|0.00|>``, so a leading
    0.00 boundary is dropped), v2 as plain text ``word (start-end)`` with 0.01 s times."""
    if not example.task.timestamps:
        return example.target
    spec = task_spec(example, P.family_spec(family))
    if spec is None:
        return " ".join(f"{w.word} ({w.start:.2f}-{w.end:.2f})" for w in example.words
                        if w.word is not None)
    words = [w for w in example.words if w.word is not None]
    silences = [(w.start, w.end) for w in example.words if w.word is None]
    text = P.format_timed_words(words, silences)
    primed = P.timestamp_tag(spec.first_timestamp or 0.0)
    return text.removeprefix(primed)
