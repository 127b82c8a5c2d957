"""Qwen2-Audio: its family object (`QWEN2_AUDIO`), base-model prompts (`build_base_prompt`) and
the Qwen2-Audio-Instruct chat template."""

from __future__ import annotations

from collections.abc import Sequence

from lalm.errors import PromptError
from lalm.prompt.build import Piece, Prompt, TextPiece, chatml_pieces, merge_texts
from lalm.prompt.family import FamilySpec, register_family
from lalm.prompt.parts import AudioPart, Message
from lalm.prompt.tokens import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN2_AUDIO_BOS,
    QWEN2_AUDIO_EOS,
    QWEN2_AUDIO_SPECIAL_TOKENS,
    QWEN2_AUDIO_TOKEN,
    check_text,
)

#: The base model's ASR instruction (the official LibriSpeech evaluation's prompt), followed by
#: the language tag.
QWEN2_ASR_INSTRUCTION = "Detect the language and recognize the speech: "


def build_base_prompt(audios: Sequence[AudioPart], instruction: str) -> Prompt:
    """A Qwen2-Audio base-model prompt (no ChatML).

    ``<|audio_bos|><|AUDIO|><|audio_eos|>`` per audio, then the instruction, e.g.
    ``"Generate the caption in English:"``.

    Raises:
        PromptError: no audio, or the instruction holds ``<|AUDIO|>``.
    """
    if not audios:
        raise PromptError("a Qwen2-Audio base prompt needs at least one audio")
    check_text(instruction, QWEN2_AUDIO.slot_tokens, "instruction")
    pieces: list[Piece] = []
    for audio in audios:
        pieces += [TextPiece(QWEN2_AUDIO_BOS), audio, TextPiece(QWEN2_AUDIO_EOS)]
    pieces.append(TextPiece(instruction))
    return Prompt(QWEN2_AUDIO, merge_texts(pieces))


def _qwen2_chat(messages: Sequence[Message], add_generation_prompt: bool
                ) -> tuple[Piece, ...]:
    """Qwen2-Audio-Instruct (its chat template): ``Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\\n``
    (k counts over the conversation); every turn is ``<|im_start|>role\\ncontent<|im_end|>\\n``.
    Message text may not hold special tokens. Audio-only turns are voice chat, audio + text
    turns are audio analysis: the same template."""
    return chatml_pieces(messages, add_generation_prompt, QWEN2_AUDIO_SPECIAL_TOKENS,
                         lambda part, k: [TextPiece(f"Audio {k}: {QWEN2_AUDIO_BOS}"), part,
                                          TextPiece(f"{QWEN2_AUDIO_EOS}\n")])


QWEN2_AUDIO = register_family(FamilySpec(
    name="qwen2-audio", label="Qwen2-Audio", signature=frozenset({QWEN2_AUDIO_TOKEN}),
    audio_start=QWEN2_AUDIO_BOS, audio_pad=QWEN2_AUDIO_TOKEN, audio_end=QWEN2_AUDIO_EOS,
    boundary_rows=0, labelled_audio=False, real_length="ceil",
    stop_tokens=(ENDOFTEXT, IM_END, IM_START), timestamps=False,
    text_specials=frozenset(), response_skips_special=True, asr_scoring="qwen2-audio-asr-v1",
    chat_template=_qwen2_chat, asr_instruction=QWEN2_ASR_INSTRUCTION,
    instruction_prompt=build_base_prompt))
