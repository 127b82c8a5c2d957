"""Subtitles from timed words: group words into cues, write SRT and WebVTT.

Pure functions over `lalm.prompt.TimedWord` (the SRWT words of `lalm.prompt.parse_output`, or
the stitched words of a long-form transcription):

    cues = group_cues(result.parsed.words)
    Path("talk.srt").write_text(format_srt(cues))

or from a transcript's segments (`lalm.generation.Pipeline.transcribe_segments`), as the CLI and
the API make subtitles: ``format_srt(transcript_cues(transcript.segments))``.

A cue collects consecutive words until the next one would make it longer than ``max_chars``
characters or ``max_duration_s`` seconds, or follows a pause of at least ``max_gap_s``
(subtitle conventions: about 42 characters per line, a few seconds per cue). Times are written
to the millisecond: SRT ``HH:MM:SS,mmm``, WebVTT ``HH:MM:SS.mmm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lalm.errors import PromptError
from lalm.prompt import TimedWord

Seconds = float


@dataclass(frozen=True)
class Cue:
    """One subtitle: text shown from ``start`` to ``end`` seconds."""

    start: Seconds
    end: Seconds
    text: str


class Segment(Protocol):
    """A stretch of a recording with its text (`lalm.generation.TranscriptSegment`)."""

    start: Seconds
    end: Seconds
    text: str
    words: Sequence[TimedWord]


def transcript_cues(segments: Sequence[Segment], spaceless: bool = False,
                    by_words: bool = False) -> list[Cue]:
    """The cues of a transcript, segment by segment.

    Each segment's text is one cue over the segment, as the server's srt / vtt give them;
    with ``by_words``, a segment with word times (v1 SRWT) gives its words grouped into cues
    instead (`group_cues`), and one without (v1 output whose times did not parse) still its
    text. A segment without text gives none.

    Args:
        segments: the transcript's segments in order (the whole clip, or one per window).
        spaceless: join words without spaces (Chinese, Japanese).
        by_words: cues of words where the segment has word times.

    Returns:
        The cues in order.

    Raises:
        PromptError: a word with a negative, non-finite or reversed time span.
    """
    cues: list[Cue] = []
    for segment in segments:
        if by_words and segment.words:
            cues += group_cues(segment.words, spaceless=spaceless)
        elif segment.text.strip():
            cues.append(Cue(segment.start, segment.end, segment.text.strip()))
    return cues


def _check(word: TimedWord) -> None:
    ok = all(isinstance(t, (int, float)) and math.isfinite(t) for t in (word.start, word.end))
    if not ok or not 0 <= word.start <= word.end:
        raise PromptError(f"timed word {word.word!r} needs 0 <= start <= end, got "
                          f"{word.start!r}..{word.end!r}")


def group_cues(
    words: Sequence[TimedWord],
    max_chars: int = 42,
    max_duration_s: Seconds = 6.0,
    max_gap_s: Seconds = 1.0,
    spaceless: bool = False,
) -> list[Cue]:
    """Group consecutive words into cues.

    Args:
        words: words in order, times in seconds.
        max_chars: longest cue text (a single longer word still makes one cue).
        max_duration_s: longest cue, first word's start to last word's end.
        max_gap_s: a pause at least this long between two words starts a new cue.
        spaceless: join words without spaces (Chinese, Japanese).

    Returns:
        The cues in order; each spans its first word's start to its last word's end.

    Raises:
        PromptError: a word with a negative, non-finite or reversed time span.
    """
    sep = "" if spaceless else " "
    cues: list[Cue] = []
    current: list[TimedWord] = []
    for word in words:
        _check(word)
        if current:
            text = sep.join(w.word for w in current) + sep + word.word
            if (len(text) > max_chars or word.end - current[0].start > max_duration_s
                    or word.start - current[-1].end >= max_gap_s):
                cues.append(_cue(current, sep))
                current = []
        current.append(word)
    if current:
        cues.append(_cue(current, sep))
    return cues


def _cue(words: Sequence[TimedWord], sep: str) -> Cue:
    return Cue(words[0].start, words[-1].end, sep.join(w.word for w in words))


def format_timestamp(seconds: Seconds, decimal_marker: str = ",") -> str:
    """``HH:MM:SS,mmm`` (``.`` as marker for WebVTT), rounded to the millisecond."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def format_srt(cues: Sequence[Cue]) -> str:
    """SubRip text: numbered cues, each ``n``, ``start --> end``, text, separated by blank lines.

    Returns:
        The file content ("" for no cues), ending with a newline.
    """
    blocks = [f"{i}\n{format_timestamp(c.start)} --> {format_timestamp(c.end)}\n{c.text}\n"
              for i, c in enumerate(cues, start=1)]
    return "\n".join(blocks)


def format_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT text: the ``WEBVTT`` header, then each cue's ``start --> end`` and text.

    Returns:
        The file content, ending with a newline.
    """
    blocks = [f"{format_timestamp(c.start, '.')} --> {format_timestamp(c.end, '.')}\n{c.text}\n"
              for c in cues]
    return "\n".join(["WEBVTT\n", *blocks])
