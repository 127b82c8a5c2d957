"""The tag strings of every family: the only place they are written (STYLE.md §3).

ChatML, Qwen2-Audio's ``<|AUDIO|>`` tokens, Qwen-Audio (v1)'s 3,314 audio specials in id order
(`QWEN_AUDIO_SPECIAL_TOKENS`, read by `lalm.tokenizer`), v1's task/header/instruction tags and
timestamps, and the prompt languages.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import Enum

from lalm.errors import PromptError

Seconds = float


def tag(name: str) -> str:
    """The special-token string ``<|name|>``."""
    return f"<|{name}|>"


# ---------------------------------------------------------------------------- tag tables

ENDOFTEXT = tag("endoftext")
IM_START = tag("im_start")
IM_END = tag("im_end")
EXTRA_TOKENS = tuple(tag(f"extra_{i}") for i in range(205))

AUDIO_PAD = "[[[AUDIO:modality]]]"  # v1 per-frame placeholder, id 151851
AUDIO_START = "<audio>"  # v1, id 155163
AUDIO_END = "</audio>"  # v1, id 155164
QWEN2_AUDIO_TOKEN = tag("AUDIO")  # 151646
QWEN2_AUDIO_BOS = tag("audio_bos")  # 151647
QWEN2_AUDIO_EOS = tag("audio_eos")  # 151648

LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it")
UNKNOWN_LANGUAGE = "unknown"
LANGUAGE_TAGS = (UNKNOWN_LANGUAGE, *LANGUAGES, "zh_tr")  # zh_tr: traditional Chinese
SPACELESS_LANGUAGES = frozenset({"zh", "zh_tr", "ja"})

MAX_TIMESTAMP: Seconds = 30.0  # timestamps <|0.00|> .. <|30.00|> in steps of 0.01 s


def timestamp_tag(t: Seconds) -> str:
    """``<|t|>`` for t in [0, 30] s, rounded to the 0.01 s grid.

    Raises:
        PromptError: t is outside [0, 30] or not finite.
    """
    if not (0.0 <= t <= MAX_TIMESTAMP):
        raise PromptError(f"timestamp {t!r} s is outside [0, {MAX_TIMESTAMP:.0f}] s")
    centi = round(t * 100)
    return tag(f"{centi // 100}.{centi % 100:02d}")


class Header(str, Enum):
    """First v1 tag: transcription-like or analysis-like output."""

    TRANSCRIPT = "startoftranscript"
    ANALYSIS = "startofanalysis"


class Task(str, Enum):
    """v1 task tag (QUESTION writes ``<|question|>...<|answer|>`` instead of a task tag)."""

    TRANSLATE = "translate"
    TRANSCRIBE = "transcribe"
    CAPTION = "caption"
    KEYWORD = "keyword"
    QUESTION = "question"


class Instruction(str, Enum):
    """v1 output-instruction tags (the last tag of a task prompt)."""

    CAPTION_AUDIOCAPS = "caption_audiocaps"
    CAPTION_CLOTHO = "caption_clotho"
    AUDIOSET_ONTOLOGY = "audioset_ontology"
    CAPTION_PLAIN = "caption_plain"
    ITN = "itn"  # inverse text normalisation on
    WO_ITN = "wo_itn"
    NAMED_ENTITY_RECOGNITION = "named_entity_recognition"
    AUDIO_GROUNDING = "audio_grounding"
    EMOTION_RECOGNITION = "emotion_recognition"
    MUSIC_DESCRIPTION = "music_description"
    NOTE_ANALYSIS = "note_analysis"
    SPEAKER_META = "speaker_meta"
    SONG_META = "song_meta"
    SCENE = "scene"
    EVENT = "event"
    VOCAL_CLASSIFICATION = "vocal_classification"
    SPEECH_UNDERSTANDING = "speech_understanding"
    SPEECH_EDIT = "speech_edit"


_V1_AUDIO_TAG_NAMES = (
    *(h.value for h in Header),
    *(t.value for t in Task if t is not Task.QUESTION),
    *LANGUAGE_TAGS,
    "notimestamps", "sil", "timestamps",
    *(f"{i // 100}.{i % 100:02d}" for i in range(3001)),
    "caption_audiocaps", "caption_clotho", "audioset_ontology", "caption_plain", "itn", "wo_itn",
    "startofentityvalue", "endofentityvalue", "startofentitytype", "endofentitytype",
    "named_entity_recognition", "audio_grounding", "startofword", "endofword", "delim",
    "emotion_recognition", "music_description", "note_analysis",
    "pitch", *(f"midi_pitch_{i}" for i in range(128)),
    "velocity", *(f"midi_velocity_{i}" for i in range(128)),
    "sonic", "instrument", "speaker_meta", "song_meta", "question", "answer", "choice", "scene",
    "event", "vocal_classification", "speech_understanding", "scenario", "action", "entities",
    "speech_edit",
)
# v1 audio specials (AUDIO_ST), ids 151851..155164 in this order.
QWEN_AUDIO_AUDIO_TOKENS = (AUDIO_PAD, *map(tag, _V1_AUDIO_TAG_NAMES), AUDIO_START, AUDIO_END)
# The whole v1 special table, ids from 151643 (right after the 151,643 BPE ranks) on.
QWEN_AUDIO_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, *EXTRA_TOKENS, *QWEN_AUDIO_AUDIO_TOKENS)
# Qwen2-Audio's added tokens, ids 151643..151648.
QWEN2_AUDIO_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, QWEN2_AUDIO_TOKEN, QWEN2_AUDIO_BOS,
                              QWEN2_AUDIO_EOS)

# The v1 tokens that receive a clip's rows (learned BOS, frames, learned EOS).
V1_SLOT_TOKENS = (AUDIO_START, AUDIO_PAD, AUDIO_END)
# Specials v1 message text and training targets may contain: the audio tags, as make_context
# allows, minus the slot tokens (audio enters a message only as an AudioPart).
V1_TEXT_SPECIALS = frozenset(QWEN_AUDIO_AUDIO_TOKENS) - frozenset(V1_SLOT_TOKENS)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def check_text(text: str, forbidden: Collection[str], what: str) -> None:
    """Refuse text that holds one of the ``forbidden`` special tokens (audio slots).

    Raises:
        PromptError: naming ``what`` and the token.
    """
    for token in forbidden:
        if token in text:
            raise PromptError(f"{what} contains the special token {token!r}; pass audio as an "
                              f"AudioPart and keep special tokens out of text")
