"""Qwen2.5-Omni (its thinker: audio + text in, text out): its family object (`QWEN2_5_OMNI`),
its chat template and ASR prompt; `chatml_template` writes the plain ChatML with audio spans
that Qwen2.5-Omni and Qwen3-ASR share.

The released chat template: ``<|im_start|>role\\n`` content ``<|im_end|>\\n`` per turn, each
audio as ``<|audio_bos|><|AUDIO|><|audio_eos|>`` (the processor repeats ``<|AUDIO|>`` once per
audio token), any number of audios per turn, and Omni's own system prompt when a conversation
has none. The rows a clip takes are the model's (`AudioLanguageModel.audio_row_counts`:
windowed encoder, then 2x pooling); the family only says how mel frames are counted ("ceil",
the Whisper feature extractor's attention mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from lalm.errors import PromptError
from lalm.prompt.build import (
    Piece,
    Prompt,
    TextPiece,
    build_chat_prompt,
    chatml_pieces,
)
from lalm.prompt.family import ChatTemplate, FamilySpec, register_family
from lalm.prompt.parts import AudioPart, Message, TextPart
from lalm.prompt.tokens import ENDOFTEXT, IM_END, IM_START

OMNI_AUDIO = "<|AUDIO|>"  # 151646
OMNI_AUDIO_BOS = "<|audio_bos|>"  # 151647
OMNI_AUDIO_EOS = "<|audio_eos|>"  # 151648
#: Vision slots of the Omni tokenizer (lalm has no vision tower; they tell Omni's tokenizer
#: from Qwen2-Audio's, which has ``<|AUDIO|>`` alone).
OMNI_IMAGE, OMNI_VIDEO = "<|IMAGE|>", "<|VIDEO|>"  # 151655, 151656
OMNI_SPECIAL_TOKENS = frozenset({ENDOFTEXT, IM_START, IM_END, OMNI_AUDIO, OMNI_AUDIO_BOS,
                                 OMNI_AUDIO_EOS, OMNI_IMAGE, OMNI_VIDEO})

#: The system prompt of Omni's chat template (the talker needs it to speak; the thinker was
#: trained with it).
OMNI_SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, "
                      "capable of perceiving auditory and visual inputs, as well as generating "
                      "text and speech.")
#: Omni's speech-recognition conversation (as in its universal-audio-understanding cookbook):
#: this system prompt, then a user turn of the audio and the instruction naming the language.
OMNI_ASR_SYSTEM_PROMPT = "You are a speech recognition model."
OMNI_ASR_INSTRUCTION = "Transcribe the {language} audio into text without any punctuation marks."

#: Language codes -> the English names the Qwen ASR prompts write.
LANGUAGE_NAMES = {
    "ar": "Arabic", "yue": "Cantonese", "zh": "Chinese", "cs": "Czech", "da": "Danish",
    "nl": "Dutch", "en": "English", "fil": "Filipino", "fi": "Finnish", "fr": "French",
    "de": "German", "el": "Greek", "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "mk": "Macedonian", "ms": "Malay",
    "fa": "Persian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "es": "Spanish", "sv": "Swedish", "th": "Thai", "tr": "Turkish", "vi": "Vietnamese",
}


def language_name(language: str) -> str:
    """The English name of a language code ("en" -> "English").

    Raises:
        PromptError: a code the Qwen ASR prompts have no name for.
    """
    try:
        return LANGUAGE_NAMES[language]
    except (KeyError, TypeError):
        raise PromptError(f"unknown language {language!r}; known: "
                          f"{', '.join(sorted(LANGUAGE_NAMES))}") from None


def chatml_template(audio_start: str, audio_end: str, specials: frozenset[str]) -> ChatTemplate:
    """Plain ChatML with audio: ``<|im_start|>role\\n`` content ``<|im_end|>\\n`` per turn, each
    audio as ``audio_start``, the family's audio slot token expanded to the clip's N tokens,
    ``audio_end``; any number of audios anywhere in a turn. Message text may not hold
    ``specials``."""

    def template(messages: Sequence[Message], add_generation_prompt: bool
                 ) -> tuple[Piece, ...]:
        return chatml_pieces(messages, add_generation_prompt, specials,
                             lambda part, _: [TextPiece(audio_start), part, TextPiece(audio_end)])

    return template


def instruction_chat(family: FamilySpec | str, audios: Sequence[AudioPart],
                     instruction: str) -> Prompt:
    """A base-style instruction prompt for a chat-only family: one user turn of the clips and
    the instruction, under the family's default system prompt (bind ``family`` with
    `functools.partial` for `FamilySpec.instruction_prompt`).

    Raises:
        PromptError: no audio.
    """
    if not audios:
        raise PromptError("an instruction prompt needs at least one audio")
    content = (*audios, *([TextPart(instruction)] if instruction else []))
    return build_chat_prompt([Message("user", content)], family)


def _omni_asr(audio: AudioPart, language: str) -> Prompt:
    """Omni's ASR conversation: its recogniser system prompt, then the audio and
    "Transcribe the English audio into text without any punctuation marks."."""
    instruction = OMNI_ASR_INSTRUCTION.format(language=language_name(language))
    return build_chat_prompt([Message("system", OMNI_ASR_SYSTEM_PROMPT),
                              Message("user", (audio, TextPart(instruction)))], QWEN2_5_OMNI)


QWEN2_5_OMNI = register_family(FamilySpec(
    name="qwen2.5-omni", label="Qwen2.5-Omni",
    signature=frozenset({OMNI_AUDIO, OMNI_IMAGE, OMNI_VIDEO}),
    audio_start=OMNI_AUDIO_BOS, audio_pad=OMNI_AUDIO, audio_end=OMNI_AUDIO_EOS,
    boundary_rows=0, labelled_audio=False, real_length="ceil",
    stop_tokens=(ENDOFTEXT, IM_END), timestamps=False, text_specials=frozenset(),
    response_skips_special=True, asr_scoring="qwen2-audio-asr-v1",
    chat_template=chatml_template(OMNI_AUDIO_BOS, OMNI_AUDIO_EOS,
                                  OMNI_SPECIAL_TOKENS),
    instruction_prompt=partial(instruction_chat, "qwen2.5-omni"),
    default_system=OMNI_SYSTEM_PROMPT, asr_chat=_omni_asr))
