"""What the model writes back: `parse_output` (generated text -> plain text, language, SRWT
words with times, timestamps, note-analysis fields), and `format_timed_words` /
`format_note_analysis`, which write such targets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lalm.errors import PromptError
from lalm.prompt.tokens import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    LANGUAGE_TAGS,
    SPACELESS_LANGUAGES,
    Seconds,
    tag,
    timestamp_tag,
)

if TYPE_CHECKING:
    from lalm.prompt.task import TaskSpec

_TAG_RE = re.compile(r"<\|([^<>|]*)\|>")
_TIMESTAMP_RE = re.compile(r"\d{1,2}\.\d\d")
_END_TAGS = (ENDOFTEXT, IM_END, IM_START)


@dataclass(frozen=True)
class TimedWord:
    """A word (or character run) at its place in the audio, in seconds: parsed from SRWT output,
    or a manifest's word timestamps (`lalm.data.manifest.Example.words`).

    Attributes:
        word: the word as written; None marks a silence span (a manifest's pauses, rendered as
            v1's ``<|sil|>``; parsed output keeps silences apart, in `ParsedOutput.silences`).
        start: start time in seconds.
        end: end time in seconds.
    """

    word: str | None
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
