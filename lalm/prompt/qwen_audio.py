"""Qwen-Audio (v1): its family object (`QWEN_AUDIO`), task-tag prompts (`build_prompt`) and the
Qwen-Audio-Chat ChatML template."""

from __future__ import annotations

from collections.abc import Sequence

from lalm.errors import PromptError
from lalm.prompt.build import Piece, Prompt, TextPiece, merge_texts
from lalm.prompt.family import FamilySpec, register_family
from lalm.prompt.parts import AudioPart, Message
from lalm.prompt.task import TaskSpec
from lalm.prompt.tokens import (
    AUDIO_END,
    AUDIO_PAD,
    AUDIO_START,
    ENDOFTEXT,
    IM_END,
    IM_START,
    V1_SLOT_TOKENS,
    V1_TEXT_SPECIALS,
    check_text,
)


def build_prompt(spec: TaskSpec, audio: AudioPart) -> Prompt:
    """A v1 task prompt: ``<audio>label</audio>`` followed by the spec's tags.

    Example: ``TaskSpec.asr("en")`` on ``a.wav`` gives ``<audio>a.wav</audio>`` followed by
    ``<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>``.
    """
    if not isinstance(audio, AudioPart):
        raise PromptError(f"build_prompt takes an AudioPart, got {type(audio).__name__}")
    return Prompt(QWEN_AUDIO, (audio, TextPiece(spec.render())))


def _v1_chat(messages: Sequence[Message], add_generation_prompt: bool
             ) -> tuple[Piece, ...]:
    """Qwen-Audio-Chat (``make_context``): each audio of a message becomes
    ``Audio k:<audio>label</audio>\\n`` (k counts within the message); every turn is
    ``\\n<|im_start|>role\\ncontent<|im_end|>`` (no leading newline for the first), encoded
    piece by piece as make_context does; message text may hold v1 task tags."""
    pieces: list[Piece] = []
    for i, m in enumerate(messages):
        pieces += [TextPiece("\n")] if i else []
        pieces += [TextPiece(IM_START), TextPiece(m.role), TextPiece("\n"), *_v1_content(m),
                   TextPiece(IM_END)]
    if add_generation_prompt:
        pieces += [TextPiece("\n"), TextPiece(IM_START), TextPiece("assistant"), TextPiece("\n")]
    return tuple(p for p in pieces if not isinstance(p, TextPiece) or p.text)


def _v1_content(message: Message) -> list[Piece]:
    """v1 message content as from_list_format writes it; text between audios is one call."""
    pieces: list[Piece] = []
    count = 0
    for part in message.content:
        if isinstance(part, AudioPart):
            count += 1
            pieces += [TextPiece(f"Audio {count}:", V1_TEXT_SPECIALS), part,
                       TextPiece("\n", V1_TEXT_SPECIALS)]
        else:
            check_text(part.text, V1_SLOT_TOKENS, f"{message.role} message text")
            pieces.append(TextPiece(part.text, V1_TEXT_SPECIALS))
    return list(merge_texts(pieces))


QWEN_AUDIO = register_family(FamilySpec(
    name="qwen-audio", label="Qwen-Audio (v1)", signature=frozenset({AUDIO_START, AUDIO_PAD}),
    audio_start=AUDIO_START, audio_pad=AUDIO_PAD, audio_end=AUDIO_END, boundary_rows=2,
    labelled_audio=True, real_length="floor", stop_tokens=(ENDOFTEXT, IM_END, IM_START),
    timestamps=True, text_specials=V1_TEXT_SPECIALS, response_skips_special=False,
    asr_scoring="qwen-audio-asr-v1", chat_template=_v1_chat, tag_prompt=build_prompt))
