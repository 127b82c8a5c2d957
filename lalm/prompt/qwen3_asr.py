"""Qwen3-ASR: its family object (`QWEN3_ASR`), its prompts and the parser of its transcripts
(`parse_asr_output`).

The released chat template is plain ChatML (`chatml_template`) with each audio as
``<|audio_start|><|audio_pad|><|audio_end|>`` and an empty system prompt when a conversation has
none (the system turn carries optional context: hot words). Recognition is that conversation
with only the audio in the user turn; the model answers ``language English<asr_text>…``. A known
language is forced as transformers' `Qwen3ASRProcessor` does: the assistant turn is prefilled
with ``language English<asr_text>`` and the model writes the transcript alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

from lalm.prompt.build import Prompt, TextPiece, build_chat_prompt, merge_texts
from lalm.prompt.family import FamilySpec, register_family
from lalm.prompt.parse import ParsedOutput
from lalm.prompt.parts import AudioPart, Message
from lalm.prompt.qwen2_5_omni import LANGUAGE_NAMES, chatml_template, instruction_chat, language_name
from lalm.prompt.task import TaskSpec
from lalm.prompt.tokens import ENDOFTEXT, IM_END, IM_START

ASR_AUDIO_START = "<|audio_start|>"  # 151669
ASR_AUDIO_END = "<|audio_end|>"  # 151670
ASR_AUDIO_PAD = "<|audio_pad|>"  # 151676
#: Ends the language header of a transcript (151704; an added token that is not special).
ASR_TEXT = "<asr_text>"
ASR_SPECIAL_TOKENS = frozenset({ENDOFTEXT, IM_START, IM_END, ASR_AUDIO_START, ASR_AUDIO_END,
                                ASR_AUDIO_PAD, ASR_TEXT})

@dataclass(frozen=True)
class AsrOutput:
    """A Qwen3-ASR transcript split into its parts.

    Attributes:
        language: the language the model named ("English", "Chinese", ...), or None when it
            named none ("language None": no speech) or the output has no language header.
        text: the transcript after `<asr_text>` (the whole output when there is no marker).
    """

    language: str | None
    text: str


_HEADER = re.compile(r"\s*language\s+(?P<language>[^<]*?)\s*<asr_text>", re.IGNORECASE)


def parse_asr_output(decoded: str) -> AsrOutput:
    """Split Qwen3-ASR's decoded output ``language X<asr_text>transcript`` into language and
    text (pure; the special tokens `<|im_end|>` etc. are expected to be stripped already).

    A forced language is put in the prompt, so the model then writes only the transcript;
    without the header the whole output is the text. A second `<asr_text>` (some outputs close
    the transcript with one) ends the text.
    """
    match = _HEADER.match(decoded)
    if match is None:
        rest = decoded.split(ASR_TEXT, 1)[-1] if decoded.lstrip().startswith(ASR_TEXT) \
            else decoded
        return AsrOutput(language=None, text=rest.split(ASR_TEXT, 1)[0].strip())
    language = match.group("language").strip()
    text = decoded[match.end():].split(ASR_TEXT, 1)[0].strip()
    return AsrOutput(language=None if language.lower() in ("", "none") else language,
                     text=text)


_END = re.compile("|".join(map(re.escape, (ENDOFTEXT, IM_END, IM_START))))
_LANGUAGE_CODES = {name.lower(): code for code, name in LANGUAGE_NAMES.items()}


def parse_transcript(text: str, spec: TaskSpec | None = None) -> ParsedOutput:
    """`FamilySpec.parse` of Qwen3-ASR: the text up to the first end tag, split by
    `parse_asr_output`; the language named in the header as its code ("English" -> "en"; a
    name without a code stays as written)."""
    del spec  # Qwen3-ASR has no task-tag prompts
    asr = parse_asr_output(_END.split(text, 1)[0])
    language = asr.language and _LANGUAGE_CODES.get(asr.language.lower(), asr.language)
    return ParsedOutput(text=asr.text, language=language)


def _asr_prompt(audio: AudioPart, language: str) -> Prompt:
    """The recognition conversation (empty system turn, the audio alone), the assistant turn
    prefilled with ``language English<asr_text>``."""
    chat = build_chat_prompt([Message("user", (audio,))], QWEN3_ASR)
    prefill = TextPiece(f"language {language_name(language)}{ASR_TEXT}", frozenset({ASR_TEXT}))
    return Prompt(QWEN3_ASR, merge_texts([*chat.pieces, prefill]))


QWEN3_ASR = register_family(FamilySpec(
    name="qwen3-asr", label="Qwen3-ASR", signature=frozenset({ASR_AUDIO_START, ASR_AUDIO_PAD}),
    audio_start=ASR_AUDIO_START, audio_pad=ASR_AUDIO_PAD, audio_end=ASR_AUDIO_END,
    boundary_rows=0, labelled_audio=False, real_length="ceil",
    stop_tokens=(ENDOFTEXT, IM_END), timestamps=False, text_specials=frozenset({ASR_TEXT}),
    response_skips_special=True, asr_scoring="qwen2-audio-asr-v1",
    chat_template=chatml_template(ASR_AUDIO_START, ASR_AUDIO_END,
                                  ASR_SPECIAL_TOKENS - {ASR_TEXT}),
    instruction_prompt=partial(instruction_chat, "qwen3-asr"), parse=parse_transcript,
    default_system="", asr_chat=_asr_prompt))
