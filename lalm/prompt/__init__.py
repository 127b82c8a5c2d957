"""Prompt formats of both families, and the parser of what the model writes back.

This is the only module that writes tag strings. It holds:

* the tag tables: ChatML, Qwen2-Audio's ``<|AUDIO|>`` tokens, and Qwen-Audio (v1)'s 3,314 audio
  specials in id order (`QWEN_AUDIO_SPECIAL_TOKENS`, read by `lalm.tokenizer`);
* v1 hierarchical task prompts: `TaskSpec` -> ``<audio>path</audio><|startoftranscript|>...``,
  exactly as the official evaluation scripts write them (`TaskSpec.asr`, `.s2tt`, `.srwt`, ...);
* chat prompts (`Message` with `TextPart` / `AudioPart` content) for the v1 Chat ChatML and the
  Qwen2-Audio-Instruct template, and Qwen2-Audio base-model prompts; `fill_audio_tags` and
  `user_message` put each audio where an ``<audio>`` tag stands in plain text (as ms-swift /
  LLaMA-Factory rows mark it);
* `Prompt.encode`: token ids with each audio expanded to its N frame tokens (`PromptIds`);
* `parse_output`: generated text -> plain text, language, SRWT words with times, timestamps,
  note-analysis fields; `format_timed_words` / `format_note_analysis` write such targets.

The prompt layer never loads audio: an `AudioPart` only refers to its source.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal, Union

from lalm.errors import PromptError

if TYPE_CHECKING:
    import numpy as np

    from lalm.tokenizer import Tokenizer

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


# ---------------------------------------------------------------------------- v1 task prompts


@dataclass(frozen=True)
class TaskSpec:
    """A v1 hierarchical-tag task prompt.

    Rendered as ``<|header|><|audio_language|>`` then either ``<|question|>{question}<|answer|>``
    (Task.QUESTION) or ``<|task|><|text_language|><|(no)timestamps|>[<|first_timestamp|>]
    [<|instruction|>]``.

    Attributes:
        task: the task tag.
        audio_language: language spoken in the audio, a `LANGUAGE_TAGS` name ("unknown" for sounds).
        text_language: language of the output (required except for Task.QUESTION).
        timestamps: ask for word timestamps (``<|timestamps|>``) instead of ``<|notimestamps|>``.
        instruction: the output-instruction tag, if any.
        first_timestamp: a timestamp that primes the output (the SRWT evaluation primes 0.00).
        question: the question of Task.QUESTION (AQA).
        header: first tag; None = TRANSCRIPT for transcribe/translate, ANALYSIS otherwise.
    """

    task: Task
    audio_language: str = UNKNOWN_LANGUAGE
    text_language: str | None = None
    timestamps: bool = False
    instruction: Instruction | None = None
    first_timestamp: Seconds | None = None
    question: str | None = None
    header: Header | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> PromptError:
            return PromptError(f"TaskSpec: {msg}")

        if not isinstance(self.task, Task):
            raise bad(f"task must be a Task, got {self.task!r}")
        for name in ("audio_language", "text_language"):
            lang = getattr(self, name)
            if lang is not None and lang not in LANGUAGE_TAGS:
                raise bad(f"unknown {name} {lang!r}; known: {', '.join(LANGUAGE_TAGS)}")
        if self.instruction is not None and not isinstance(self.instruction, Instruction):
            raise bad(f"instruction must be an Instruction, got {self.instruction!r}")
        if self.header is not None and not isinstance(self.header, Header):
            raise bad(f"header must be a Header, got {self.header!r}")
        if self.task is Task.QUESTION:
            if not isinstance(self.question, str) or not self.question.strip():
                raise bad("task QUESTION needs a non-empty question")
            if (self.text_language, self.timestamps, self.instruction,
                    self.first_timestamp) != (None, False, None, None):
                raise bad("task QUESTION takes no text_language, timestamps, instruction or "
                          "first_timestamp")
            _check_text(self.question, V1_SLOT_TOKENS, "TaskSpec.question")
            return
        if self.question is not None:
            raise bad(f"question is only for task QUESTION, not {self.task.value}")
        if self.text_language is None:
            raise bad(f"task {self.task.value} needs a text_language")
        if self.first_timestamp is not None:
            if not self.timestamps:
                raise bad("first_timestamp needs timestamps=True")
            timestamp_tag(self.first_timestamp)

    @property
    def header_tag(self) -> Header:
        """The header in effect."""
        if self.header is not None:
            return self.header
        transcript = self.task in (Task.TRANSCRIBE, Task.TRANSLATE)
        return Header.TRANSCRIPT if transcript else Header.ANALYSIS

    def render(self) -> str:
        """The tag string that follows ``<audio>path</audio>``."""
        head = tag(self.header_tag.value) + tag(self.audio_language)
        if self.task is Task.QUESTION:
            return f"{head}{tag('question')}{self.question}{tag('answer')}"
        assert self.text_language is not None  # checked in __post_init__
        out = head + tag(self.task.value) + tag(self.text_language)
        out += tag("timestamps" if self.timestamps else "notimestamps")
        if self.first_timestamp is not None:
            out += timestamp_tag(self.first_timestamp)
        if self.instruction is not None:
            out += tag(self.instruction.value)
        return out

    # The official evaluation scripts' prompts (QwenLM/Qwen-Audio eval_audio/evaluate_*.py).
    @classmethod
    def asr(cls, language: str = "en") -> TaskSpec:
        """Speech recognition (evaluate_asr.py): no ITN, no timestamps."""
        return cls(Task.TRANSCRIBE, language, language, instruction=Instruction.WO_ITN)

    @classmethod
    def s2tt(cls, source: str, target: str) -> TaskSpec:
        """Speech translation ``source`` -> ``target`` (evaluate_st.py), with ITN."""
        return cls(Task.TRANSLATE, source, target, instruction=Instruction.ITN)

    @classmethod
    def srwt(cls, language: str = "en") -> TaskSpec:
        """Speech recognition with word timestamps (evaluate_srwt.py), primed with 0.00."""
        return cls(Task.TRANSCRIBE, language, language, timestamps=True, first_timestamp=0.0)

    @classmethod
    def aac(cls, style: Instruction = Instruction.CAPTION_CLOTHO) -> TaskSpec:
        """Audio captioning (evaluate_caption.py); style CAPTION_CLOTHO/_AUDIOCAPS/_PLAIN."""
        return cls(Task.CAPTION, UNKNOWN_LANGUAGE, "en", instruction=style)

    @classmethod
    def scene(cls) -> TaskSpec:
        """Acoustic scene classification (evaluate_scene.py: CochlScene, TUT)."""
        return cls(Task.KEYWORD, UNKNOWN_LANGUAGE, "en", instruction=Instruction.SCENE)

    @classmethod
    def emotion(cls) -> TaskSpec:
        """Speech emotion recognition (evaluate_emotion.py: MELD)."""
        return cls(Task.KEYWORD, "en", "en", instruction=Instruction.EMOTION_RECOGNITION)

    @classmethod
    def vocal_sound(cls) -> TaskSpec:
        """Vocal sound classification (evaluate_vocal_sound.py: VocalSound)."""
        return cls(Task.KEYWORD, "en", "en", instruction=Instruction.VOCAL_CLASSIFICATION)

    @classmethod
    def aqa(cls, question: str) -> TaskSpec:
        """Audio question answering (evaluate_aqa.py: ClothoAQA)."""
        return cls(Task.QUESTION, "en", question=question)

    @classmethod
    def note_analysis(cls) -> TaskSpec:
        """Music note analysis (evaluate_note_analysis.py: NSynth pitch, velocity, instrument)."""
        return cls(Task.KEYWORD, UNKNOWN_LANGUAGE, "en", instruction=Instruction.NOTE_ANALYSIS)


# ---------------------------------------------------------------------------- messages

AudioSource = Union[str, "os.PathLike[str]", bytes, "np.ndarray"]
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    """Text in a message."""

    text: str


@dataclass(frozen=True, eq=False)
class AudioPart:
    """An audio clip in a message or prompt, by reference (never loaded here).

    Attributes:
        source: a path, encoded file bytes, or a float waveform array [N].
        name: text written between ``<audio>`` and ``</audio>`` in v1 prompts (it never reaches
            the ids); default: the path, or ``"audio"`` for bytes/arrays.
    """

    source: AudioSource
    name: str | None = None

    @property
    def label(self) -> str:
        """The v1 ``<audio>label</audio>`` text."""
        if self.name is not None:
            return self.name
        if isinstance(self.source, (str, os.PathLike)):
            return os.fspath(self.source)
        return "audio"


Part = Union[TextPart, AudioPart]


@dataclass(frozen=True)
class Message:
    """One chat turn; ``content`` may be given as a plain string (one TextPart)."""

    role: Role
    content: tuple[Part, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise PromptError(f"Message.role must be system, user or assistant, not {self.role!r}")
        content = self.content
        parts = (TextPart(content),) if isinstance(content, str) else tuple(content)
        for p in parts:
            if not isinstance(p, (TextPart, AudioPart)):
                raise PromptError(f"Message content must be TextPart/AudioPart, got {p!r}")
        object.__setattr__(self, "content", parts)


#: Where an audio stands in plain text: ms-swift's and LLaMA-Factory's rows (``messages`` or
#: ShareGPT ``conversations``, with an ``audios`` list) and a chat prompt given as one string mark
#: each audio so, in order. Not a model token: it never stays in a message's text.
TEXT_AUDIO_TAG = "<audio>"


def split_audio_tags(text: str) -> list[str]:
    """The text before, between and after the `TEXT_AUDIO_TAG` s of ``text`` (n tags: n + 1
    pieces, some maybe empty)."""
    return text.split(TEXT_AUDIO_TAG)


def fill_audio_tags(messages: Sequence[Message], audios: Sequence[AudioPart]) -> list[Message]:
    """The messages with each ``<audio>`` tag of their text replaced by the next of ``audios``:
    "Listen to this: <audio> and tell me" becomes text, the audio, text, in that order.

    Raises:
        PromptError: the tags are not as many as the audios.
    """
    if not all(isinstance(m, Message) for m in messages):
        raise PromptError("fill_audio_tags needs a list of Message (lalm.prompt.Message)")
    tags = sum(p.text.count(TEXT_AUDIO_TAG) for m in messages for p in m.content
               if isinstance(p, TextPart))
    if tags != len(audios):
        raise PromptError(f"the text has {tags} {TEXT_AUDIO_TAG} tag(s) but {len(audios)} audios "
                          f"were given: put one tag where each audio goes (or give a message "
                          f"list with each audio as an AudioPart)")
    queue = iter(audios)
    out = []
    for m in messages:
        parts: list[Part] = []
        for part in m.content:
            if isinstance(part, AudioPart):
                parts.append(part)
                continue
            for k, piece in enumerate(split_audio_tags(part.text)):
                parts += [next(queue)] if k else []
                parts += [TextPart(piece)] if piece else []
        out.append(Message(m.role, tuple(parts)))
    return out


def user_message(text: str, audios: Sequence[AudioPart]) -> Message:
    """A user turn of ``text`` and ``audios``: each audio where an ``<audio>`` tag of the text
    stands (`fill_audio_tags`), or, with no tags, every audio before the text (blank text: none).

    Raises:
        PromptError: tags that are not as many as the audios.
    """
    if TEXT_AUDIO_TAG in text:
        return fill_audio_tags([Message("user", text)], audios)[0]
    return Message("user", (*audios, *([TextPart(text)] if text.strip() else [])))


# ---------------------------------------------------------------------------- prompts and ids


@dataclass(frozen=True)
class _Text:
    """Text encoded in one tokenizer call, with the specials it may contain."""

    text: str
    allowed: Literal["all"] | frozenset[str] = "all"


@dataclass(frozen=True)
class PromptIds:
    """A prompt's token ids with audio expanded.

    Attributes:
        ids: token ids [S].
        audio_spans: per audio k (prompt order), the [start, end) positions of ``ids`` that take
            its rows: v1 ``<audio>``, N x ``[[[AUDIO:modality]]]``, ``</audio>`` (N + 2 rows:
            BOS, frames, EOS); Qwen2-Audio the N ``<|AUDIO|>`` positions.
    """

    ids: list[int]
    audio_spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Prompt:
    """A prompt before tokenization: text pieces and audio slots in order, for one family."""

    family: FamilySpec
    pieces: tuple[_Text | AudioPart, ...]

    @property
    def audios(self) -> tuple[AudioPart, ...]:
        """The audio parts, in the order their rows are spliced in."""
        return tuple(p for p in self.pieces if isinstance(p, AudioPart))

    @property
    def text(self) -> str:
        """The prompt as one string (v1 audio as ``<audio>label</audio>``; v2 as ``<|AUDIO|>``)."""
        return "".join(p.text if isinstance(p, _Text) else self.family.audio_text(p.label)
                       for p in self.pieces)

    @classmethod
    def from_text(cls, text: str, family: FamilySpec | str,
                  audios: Sequence[AudioPart] | None = None) -> Prompt:
        """A prompt from raw text, as the references tokenize it (every special allowed).

        v1: each ``<audio>path</audio>`` is an audio (path = its source unless ``audios`` is
        given). Qwen2-Audio: each ``<|AUDIO|>`` is an audio, taken in order from ``audios``.

        Raises:
            PromptError: audio count differs from ``audios``, or a stray slot token.
        """
        family = family_spec(family)
        chunks = re.split(family.audio_text_pattern, text)
        texts, labels = chunks[0::2], chunks[1::2]
        if audios is None:
            if not family.labelled_audio and labels:
                raise PromptError(f"prompt text has {len(labels)} {family.audio_pad}; pass audios")
            audios = [AudioPart(label) for label in labels]
        elif len(audios) != len(labels):
            raise PromptError(f"prompt text has {len(labels)} audio slots but {len(audios)} "
                              f"audios were given")
        pieces: list[_Text | AudioPart] = []
        for i, chunk in enumerate(texts):
            _check_text(chunk, family.slot_tokens, "prompt text")
            if chunk:
                pieces.append(_Text(chunk))
            if i < len(audios):
                pieces.append(audios[i])
        return cls(family, tuple(pieces))

    def encode(self, tokenizer: Tokenizer, audio_token_counts: Sequence[int]) -> PromptIds:
        """Token ids with each audio expanded to its frame tokens.

        Args:
            tokenizer: a tokenizer of this prompt's family.
            audio_token_counts: N_k for each audio in order (`lalm.audio.audio_token_count`).

        Raises:
            PromptError: wrong family or number of counts, or a negative count.
        """
        if tokenizer.family is not self.family:
            raise PromptError(f"a {self.family.name} prompt cannot be encoded with a "
                              f"{tokenizer.family.name} tokenizer ({tokenizer.source})")
        counts = list(audio_token_counts)
        if len(counts) != len(self.audios):
            raise PromptError(f"prompt has {len(self.audios)} audios but {len(counts)} audio "
                              f"token counts were given")
        if any(not isinstance(n, int) or n < 0 for n in counts):
            raise PromptError(f"audio token counts must be ints >= 0, got {counts}")
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for piece in self.pieces:
            if isinstance(piece, _Text):
                ids += tokenizer.encode(piece.text, piece.allowed)
                continue
            start = len(ids)
            ids += tokenizer.audio_span_ids(counts[len(spans)])
            spans.append((start, len(ids)))
        return PromptIds(ids, tuple(spans))


def _check_text(text: str, forbidden: Collection[str], what: str) -> None:
    for token in forbidden:
        if token in text:
            raise PromptError(f"{what} contains the special token {token!r}; pass audio as an "
                              f"AudioPart and keep special tokens out of text")


def build_prompt(spec: TaskSpec, audio: AudioPart) -> Prompt:
    """A v1 task prompt: ``<audio>label</audio>`` followed by the spec's tags.

    Example: ``TaskSpec.asr("en")`` on ``a.wav`` gives ``<audio>a.wav</audio>`` followed by
    ``<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>``.
    """
    if not isinstance(audio, AudioPart):
        raise PromptError(f"build_prompt takes an AudioPart, got {type(audio).__name__}")
    return Prompt(QWEN_AUDIO, (audio, _Text(spec.render())))


def build_base_prompt(audios: Sequence[AudioPart], instruction: str) -> Prompt:
    """A Qwen2-Audio base-model prompt (no ChatML).

    ``<|audio_bos|><|AUDIO|><|audio_eos|>`` per audio, then the instruction, e.g.
    ``"Generate the caption in English:"``.

    Raises:
        PromptError: no audio, or the instruction holds ``<|AUDIO|>``.
    """
    if not audios:
        raise PromptError("a Qwen2-Audio base prompt needs at least one audio")
    _check_text(instruction, QWEN2_AUDIO.slot_tokens, "instruction")
    pieces: list[_Text | AudioPart] = []
    for audio in audios:
        pieces += [_Text(QWEN2_AUDIO_BOS), audio, _Text(QWEN2_AUDIO_EOS)]
    pieces.append(_Text(instruction))
    return Prompt(QWEN2_AUDIO, _merge_texts(pieces))


def _merge_texts(pieces: Sequence[_Text | AudioPart]) -> tuple[_Text | AudioPart, ...]:
    """Join neighbouring texts (with equal allowed sets): they are one tokenizer call."""
    out: list[_Text | AudioPart] = []
    for p in pieces:
        if isinstance(p, _Text) and out and isinstance(out[-1], _Text) \
                and out[-1].allowed == p.allowed:
            out[-1] = _Text(out[-1].text + p.text, p.allowed)
        elif not (isinstance(p, _Text) and not p.text):
            out.append(p)
    return tuple(out)


def build_chat_prompt(messages: Sequence[Message], family: FamilySpec | str, *,
                      add_generation_prompt: bool = True) -> Prompt:
    """A ChatML conversation with audio, as the family's chat model was trained on it
    (`FamilySpec.chat_template`).

    Every family inserts the system prompt "You are a helpful assistant." when the first
    message is not a system message.

    Args:
        messages: an optional leading system message, then user/assistant turns.
        family: which chat format (a `FamilySpec` or its name).
        add_generation_prompt: end with the opening of an assistant turn (the last message must
            then be a user turn); False renders a finished conversation (e.g. for training).

    Raises:
        PromptError: a misplaced system message, no turns, or a conversation that ends wrongly.
    """
    family = family_spec(family)
    messages = list(messages)
    if not messages or not all(isinstance(m, Message) for m in messages):
        raise PromptError("build_chat_prompt needs a non-empty list of Message")
    if any(m.role == "system" for m in messages[1:]):
        raise PromptError("a system message may only come first")
    if messages[0].role != "system":
        messages.insert(0, Message("system", DEFAULT_SYSTEM_PROMPT))
    if len(messages) < 2:
        raise PromptError("a chat needs at least one user or assistant message")
    if add_generation_prompt and messages[-1].role != "user":
        raise PromptError("add_generation_prompt needs the last message to be a user turn")
    return Prompt(family, family.chat_template(messages, add_generation_prompt))


def _v1_chat(messages: Sequence[Message], add_generation_prompt: bool
             ) -> tuple[_Text | AudioPart, ...]:
    """Qwen-Audio-Chat (``make_context``): each audio of a message becomes
    ``Audio k:<audio>label</audio>\\n`` (k counts within the message); every turn is
    ``\\n<|im_start|>role\\ncontent<|im_end|>`` (no leading newline for the first), encoded
    piece by piece as make_context does; message text may hold v1 task tags."""
    pieces: list[_Text | AudioPart] = []
    for i, m in enumerate(messages):
        pieces += [_Text("\n")] if i else []
        pieces += [_Text(IM_START), _Text(m.role), _Text("\n"), *_v1_content(m), _Text(IM_END)]
    if add_generation_prompt:
        pieces += [_Text("\n"), _Text(IM_START), _Text("assistant"), _Text("\n")]
    return tuple(p for p in pieces if not isinstance(p, _Text) or p.text)


def _qwen2_chat(messages: Sequence[Message], add_generation_prompt: bool
                ) -> tuple[_Text | AudioPart, ...]:
    """Qwen2-Audio-Instruct (its chat template): ``Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\\n``
    (k counts over the conversation); every turn is ``<|im_start|>role\\ncontent<|im_end|>\\n``.
    Message text may not hold special tokens. Audio-only turns are voice chat, audio + text
    turns are audio analysis: the same template."""
    pieces: list[_Text | AudioPart] = []
    count = 0
    for m in messages:
        pieces.append(_Text(f"{IM_START}{m.role}\n"))
        for part in m.content:
            if isinstance(part, AudioPart):
                count += 1
                pieces += [_Text(f"Audio {count}: {QWEN2_AUDIO_BOS}"), part,
                           _Text(f"{QWEN2_AUDIO_EOS}\n")]
            else:
                _check_text(part.text, QWEN2_AUDIO_SPECIAL_TOKENS, f"{m.role} message text")
                pieces.append(_Text(part.text))
        pieces.append(_Text(f"{IM_END}\n"))
    if add_generation_prompt:
        pieces.append(_Text(f"{IM_START}assistant\n"))
    return _merge_texts(pieces)


def _v1_content(message: Message) -> list[_Text | AudioPart]:
    """v1 message content as from_list_format writes it; text between audios is one call."""
    pieces: list[_Text | AudioPart] = []
    count = 0
    for part in message.content:
        if isinstance(part, AudioPart):
            count += 1
            pieces += [_Text(f"Audio {count}:", V1_TEXT_SPECIALS), part,
                       _Text("\n", V1_TEXT_SPECIALS)]
        else:
            _check_text(part.text, V1_SLOT_TOKENS, f"{message.role} message text")
            pieces.append(_Text(part.text, V1_TEXT_SPECIALS))
    return list(_merge_texts(pieces))


# ---------------------------------------------------------------------------- output parsing

_TAG_RE = re.compile(r"<\|([^<>|]*)\|>")
_TIMESTAMP_RE = re.compile(r"\d{1,2}\.\d\d")
_END_TAGS = (ENDOFTEXT, IM_END, IM_START)


@dataclass(frozen=True)
class TimedWord:
    """A word (or character run) with its start and end in seconds."""

    word: str
    start: Seconds
    end: Seconds


@dataclass(frozen=True)
class NoteAnalysis:
    """Note-analysis fields (NSynth): MIDI pitch and velocity, instrument, sonic qualities."""

    pitch: int | None = None
    velocity: int | None = None
    instrument: str | None = None
    sonic: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedOutput:
    """What a generated text says, tags resolved.

    Attributes:
        text: the text without tags (in non-timestamp mode a timestamp tag becomes its number,
            so "starts at <|2.33|> seconds" reads "starts at 2.33 seconds").
        language: the first language tag, if any.
        words: timed words (SRWT output).
        silences: (start, end) of each ``<|sil|>`` span between two timestamps.
        timestamps: every timestamp, in order (e.g. the ends of a grounding answer).
        tags: every other tag name, in order.
        note: note-analysis fields when the output has any.
    """

    text: str
    language: str | None = None
    words: tuple[TimedWord, ...] = ()
    silences: tuple[tuple[Seconds, Seconds], ...] = ()
    timestamps: tuple[Seconds, ...] = ()
    tags: tuple[str, ...] = ()
    note: NoteAnalysis | None = None


def _segments(text: str) -> list[tuple[bool, str]]:
    """(is_tag, tag name or text) runs of ``text``."""
    out: list[tuple[bool, str]] = []
    pos = 0
    for m in _TAG_RE.finditer(text):
        if m.start() > pos:
            out.append((False, text[pos:m.start()]))
        out.append((True, m.group(1)))
        pos = m.end()
    if pos < len(text):
        out.append((False, text[pos:]))
    return out


def parse_output(text: str, spec: TaskSpec | None = None) -> ParsedOutput:
    """Parse generated text (decoded with special tokens kept).

    Everything from the first ``<|endoftext|>`` / ``<|im_end|>`` / ``<|im_start|>`` on is ignored.

    Args:
        text: the generated text, without the prompt.
        spec: the task prompt it answers. With ``spec.timestamps`` the output is read as SRWT:
            ``<|t0|>w1<|t1|>w2<|t2|>`` gives words (w1, t0, t1), (w2, t1, t2), and
            ``<|a|><|sil|><|b|>`` a silence (a, b); ``spec.first_timestamp`` is the opening
            boundary the prompt already wrote. Words lacking a boundary are kept in ``text`` only.

    Returns:
        The `ParsedOutput`.
    """
    if not isinstance(text, str):
        raise PromptError(f"parse_output takes a str, got {type(text).__name__}")
    cut = min((i for i in (text.find(t) for t in _END_TAGS) if i >= 0), default=len(text))
    srwt = spec is not None and spec.timestamps
    last_ts = spec.first_timestamp if srwt and spec is not None else None
    language: str | None = None
    words: list[TimedWord] = []
    silences: list[tuple[Seconds, Seconds]] = []
    stamps: list[Seconds] = []
    tags: list[str] = []
    chunks: list[str] = []
    pending: list[str] = []
    silence = False
    numbers: dict[str, int] = {}  # note analysis: pitch, velocity
    texts: dict[str, str] = {}  # note analysis: instrument, sonic
    expect: str | None = None  # the note field whose value comes next
    for is_tag, value in _segments(text[:cut]):
        if is_tag and _TIMESTAMP_RE.fullmatch(value):
            t = float(value)
            stamps.append(t)
            if last_ts is not None and pending:
                words.append(TimedWord(" ".join(pending), last_ts, t))
            if last_ts is not None and silence:
                silences.append((last_ts, t))
            pending, silence, last_ts = [], False, t
            if not srwt:
                chunks.append(value)
            continue
        if not is_tag:
            if expect in ("instrument", "sonic") and value.strip():
                texts[expect] = value.strip()
            expect = None
            if srwt:
                pending += [value.strip()] if value.strip() else []
                chunks += [value.strip()] if value.strip() else []
            else:
                chunks.append(value)
            continue
        if value == "sil":
            silence = True
        elif language is None and value in LANGUAGE_TAGS:
            language = value
        elif expect in ("pitch", "velocity") and value.startswith(f"midi_{expect}_"):
            numbers[expect] = int(value.rsplit("_", 1)[1])
        tags.append(value)
        expect = value if value in ("pitch", "velocity", "instrument", "sonic") else None
    spaceless = spec is not None and spec.text_language in SPACELESS_LANGUAGES
    plain = ("" if spaceless else " ").join(chunks) if srwt else "".join(chunks)
    note = None
    if numbers or texts:
        sonic = tuple(s.strip() for s in texts.get("sonic", "").split(",") if s.strip())
        note = NoteAnalysis(numbers.get("pitch"), numbers.get("velocity"), texts.get("instrument"),
                            sonic)
    return ParsedOutput(plain.strip(), language, tuple(words), tuple(silences), tuple(stamps),
                        tuple(tags), note)


def format_timed_words(words: Sequence[TimedWord],
                       silences: Sequence[tuple[Seconds, Seconds]] = ()) -> str:
    """SRWT target text: ``<|start|>word<|end|>``, a boundary shared when one word ends where the
    next starts, and ``<|a|><|sil|><|b|>`` for silences. Times are rounded to 0.01 s.

    Raises:
        PromptError: a time outside [0, 30] s, or a word holding a tag.
    """
    events = sorted([(w.start, 1, w.word, w.end) for w in words]
                    + [(a, 0, tag("sil"), b) for a, b in silences], key=lambda e: (e[0], e[1]))
    out: list[str] = []
    last: str | None = None
    for start, is_word, body, end in events:
        if is_word and _TAG_RE.search(body):
            raise PromptError(f"timed word {body!r} contains a tag")
        first = timestamp_tag(start)
        out += [] if first == last else [first]
        last = timestamp_tag(end)
        out += [body, last]
    return "".join(out)


def format_note_analysis(note: NoteAnalysis) -> str:
    """Note-analysis target text: ``<|pitch|><|midi_pitch_P|><|velocity|><|midi_velocity_V|>
    <|instrument|>name<|sonic|>a, b`` (fields that are set, in that order).

    Raises:
        PromptError: pitch or velocity outside 0..127.
    """
    out = ""
    for name, value in (("pitch", note.pitch), ("velocity", note.velocity)):
        if value is not None:
            if not 0 <= value <= 127:
                raise PromptError(f"NoteAnalysis.{name} {value} is outside 0..127")
            out += tag(name) + tag(f"midi_{name}_{value}")
    if note.instrument is not None:
        out += tag("instrument") + note.instrument
    if note.sonic:
        out += tag("sonic") + ", ".join(note.sonic)
    return out


# ---------------------------------------------------------------------------- families

#: The Qwen2-Audio base model's ASR instruction (the official LibriSpeech evaluation's prompt),
#: followed by the language tag.
QWEN2_ASR_INSTRUCTION = "Detect the language and recognize the speech: "

ChatTemplate = Callable[[Sequence[Message], bool], tuple[_Text | AudioPart, ...]]
InstructionPrompt = Callable[[Sequence[AudioPart], str], Prompt]
OutputParser = Callable[[str, "TaskSpec | None"], ParsedOutput]


@dataclass(frozen=True, eq=False)
class FamilySpec:
    """Everything a checkpoint family changes on the text side, in one frozen object.

    The tokenizer, pipeline, evaluator, data renderer and server ask this object (its fields
    and methods) instead of testing which family they have; a new family is one new instance,
    registered with `register_family`. Instances are singletons: they compare by identity and
    unpickle to the registered instance (`family_spec(name)`).

    Attributes:
        name: the serialisable key configs, manifests, reports and checkpoints store.
        label: the family's name for people (error messages).
        signature: special tokens a tokenizer must hold to be of this family; a tokenizer
            matching several families is of the one with the largest signature.
        audio_start: token opening each clip (v1 ``<audio>``; Qwen2-Audio ``<|audio_bos|>``).
        audio_pad: the per-frame placeholder, repeated N times for a clip of N audio tokens.
        audio_end: token closing each clip (v1 ``</audio>``; Qwen2-Audio ``<|audio_eos|>``).
        boundary_rows: rows the model writes over ``audio_start`` / ``audio_end`` around each
            clip: 2 for v1's learned BOS/EOS rows (those tokens are then part of the clip's
            span); 0 where they are ordinary tokens the prompt writes as text.
        labelled_audio: the prompt text names each clip (v1 ``<audio>path</audio>``) rather than
            writing its placeholder alone.
        real_length: how the family's reference counts a clip's real mel frames
            (`lalm.audio.RealLength`): transformers' processor rounds a last partial hop up
            ("ceil"), Qwen-Audio v1 drops it ("floor").
        stop_tokens: tokens that end a reply.
        timestamps: the family has timestamp tags (word times, SRWT).
        task_tags: the family's prompts are v1 hierarchical task tags (`TaskSpec`) where a
            task has one; otherwise a task is asked in natural language.
        text_specials: specials message text and training targets may hold as tokens (v1: its
            task, timestamp and value tags); any other special in text is an error or plain text.
        response_skips_special: the official evaluation scripts decode a response without its
            special tokens (Qwen2-Audio) rather than keeping them (v1).
        asr_scoring: the ASR scoring procedure of the family's official scripts
            (`lalm.eval.metrics.error_rate` version).
        chat_template: (messages with a leading system message, add_generation_prompt) -> the
            prompt pieces; `build_chat_prompt` checks the conversation first.
        asr_instruction: the natural-language ASR instruction, before the language tag (None
            for a family whose ASR prompt is a task-tag prompt).
        instruction_prompt: (clips, instruction) -> a base-model prompt asking a task in
            natural language; None for a family that only asks by task tags.
        parse: (generated text, its task spec) -> `ParsedOutput`.
    """

    name: str
    label: str
    signature: frozenset[str]
    audio_start: str
    audio_pad: str
    audio_end: str
    boundary_rows: int
    labelled_audio: bool
    real_length: Literal["floor", "ceil"]
    stop_tokens: tuple[str, ...]
    timestamps: bool
    task_tags: bool
    text_specials: frozenset[str]
    response_skips_special: bool
    asr_scoring: str
    chat_template: ChatTemplate
    asr_instruction: str | None = None
    instruction_prompt: InstructionPrompt | None = None
    parse: OutputParser = parse_output

    def __post_init__(self) -> None:
        if self.boundary_rows not in (0, 2):
            raise PromptError(f"FamilySpec {self.name}: boundary_rows must be 0 or 2, got "
                              f"{self.boundary_rows!r}")
        if self.real_length not in ("floor", "ceil"):
            raise PromptError(f"FamilySpec {self.name}: real_length must be floor or ceil")

    def __reduce__(self) -> tuple[Callable[[str], FamilySpec], tuple[str]]:
        return family_spec, (self.name,)

    def __repr__(self) -> str:
        return f"FamilySpec({self.name!r})"

    @property
    def slot_tokens(self) -> tuple[str, ...]:
        """Tokens whose positions receive a clip's rows; never allowed in text."""
        if self.boundary_rows:
            return (self.audio_start, self.audio_pad, self.audio_end)
        return (self.audio_pad,)

    def audio_span(self, n: int) -> list[str]:
        """The tokens a clip of ``n`` audio tokens occupies in the ids (each takes one row)."""
        frames = [self.audio_pad] * n
        return [self.audio_start, *frames, self.audio_end] if self.boundary_rows else frames

    def audio_text(self, label: str) -> str:
        """How `Prompt.text` writes one clip."""
        return f"{self.audio_start}{label}{self.audio_end}" if self.labelled_audio \
            else self.audio_pad

    @property
    def audio_text_pattern(self) -> str:
        """A regex with one group (the label) matching each clip in `Prompt.text`."""
        if self.labelled_audio:
            return f"{re.escape(self.audio_start)}(.*?){re.escape(self.audio_end)}"
        return f"{re.escape(self.audio_pad)}()"

    def task_prompt(self, audio: AudioPart, spec: TaskSpec | None, instruction: str | None
                    ) -> tuple[Prompt, TaskSpec | None]:
        """A one-clip task prompt from the task described both ways: as a v1 `TaskSpec` (used
        by families with `task_tags`) and as a natural-language ``instruction`` (the others).

        Returns:
            The prompt, and the task spec its output is parsed with (None for an instruction).

        Raises:
            PromptError: the family has no prompt for the task as given (no spec for a task-tag
                family, no instruction for the others).
        """
        if self.task_tags and spec is not None:
            return build_prompt(spec, audio), spec
        if self.instruction_prompt is None or instruction is None:
            raise PromptError(f"{self.label} has no prompt for this task: it needs "
                              f"{'a task spec' if self.task_tags else 'an instruction'}")
        return self.instruction_prompt([audio], instruction), None

    def asr_prompt(self, audio: AudioPart, language: str = "en", timestamps: bool = False,
                   instruction: str | None = None) -> tuple[Prompt, TaskSpec | None]:
        """The family's speech-recognition prompt for one clip.

        v1: the official ``TaskSpec.asr`` task prompt, or ``TaskSpec.srwt`` (words with start
        and end times) with ``timestamps``. Qwen2-Audio: the base model's
        ``<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>``
        (``instruction`` replaces the instruction text of a family without task tags).

        Raises:
            PromptError: ``timestamps`` on a family without timestamp tags.
        """
        check_timestamps(self, timestamps)
        spec = TaskSpec.srwt(language) if timestamps else TaskSpec.asr(language)
        if instruction is None and self.asr_instruction is not None:
            instruction = self.asr_instruction + tag(language)
        return self.task_prompt(audio, spec, instruction)


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family to the registry (`family_spec`, `families`, tokenizer detection).

    Raises:
        PromptError: another family already has that name.
    """
    if spec.name in _FAMILIES and _FAMILIES[spec.name] is not spec:
        raise PromptError(f"a family named {spec.name!r} is already registered")
    _FAMILIES[spec.name] = spec
    return spec


def families() -> tuple[FamilySpec, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def family_spec(family: FamilySpec | str) -> FamilySpec:
    """The registered family of a name (or the family itself).

    Raises:
        PromptError: no family has that name.
    """
    if isinstance(family, FamilySpec):
        return family
    try:
        return _FAMILIES[family]
    except (KeyError, TypeError):
        raise PromptError(f"unknown family {family!r}; known: {', '.join(_FAMILIES)}") from None


def detect_family(special_tokens: Collection[str]) -> FamilySpec | None:
    """The family of a tokenizer with these special tokens: of the families whose signature it
    holds, the one with the largest signature; None when it holds none.

    Raises:
        PromptError: two matching families have equally large signatures.
    """
    held = set(special_tokens)
    matches = sorted((f for f in _FAMILIES.values() if f.signature <= held),
                     key=lambda f: len(f.signature), reverse=True)
    if len(matches) > 1 and len(matches[0].signature) == len(matches[1].signature):
        raise PromptError(f"special tokens match families {matches[0].name} and "
                          f"{matches[1].name} equally")
    return matches[0] if matches else None


def check_timestamps(family: FamilySpec, timestamps: bool) -> None:
    """Refuse word timestamps on a family without timestamp tags.

    Raises:
        PromptError: naming the families that have them.
    """
    if timestamps and not family.timestamps:
        having = " or ".join(f.label for f in families() if f.timestamps)
        raise PromptError(f"word timestamps need a {having} checkpoint; this one is "
                          f"{family.name} (its subtitles have one cue per segment)")


QWEN_AUDIO = register_family(FamilySpec(
    name="qwen-audio", label="Qwen-Audio (v1)", signature=frozenset({AUDIO_START, AUDIO_PAD}),
    audio_start=AUDIO_START, audio_pad=AUDIO_PAD, audio_end=AUDIO_END, boundary_rows=2,
    labelled_audio=True, real_length="floor", stop_tokens=(ENDOFTEXT, IM_END, IM_START),
    timestamps=True, task_tags=True, text_specials=V1_TEXT_SPECIALS,
    response_skips_special=False, asr_scoring="qwen-audio-asr-v1", chat_template=_v1_chat))

QWEN2_AUDIO = register_family(FamilySpec(
    name="qwen2-audio", label="Qwen2-Audio", signature=frozenset({QWEN2_AUDIO_TOKEN}),
    audio_start=QWEN2_AUDIO_BOS, audio_pad=QWEN2_AUDIO_TOKEN, audio_end=QWEN2_AUDIO_EOS,
    boundary_rows=0, labelled_audio=False, real_length="ceil",
    stop_tokens=(ENDOFTEXT, IM_END, IM_START), timestamps=False, task_tags=False,
    text_specials=frozenset(), response_skips_special=True, asr_scoring="qwen2-audio-asr-v1",
    chat_template=_qwen2_chat, asr_instruction=QWEN2_ASR_INSTRUCTION,
    instruction_prompt=build_base_prompt))
