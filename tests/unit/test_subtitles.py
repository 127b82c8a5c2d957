"""Subtitles: cue grouping rules and the exact SRT / WebVTT text."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lalm.errors import PromptError
from lalm.prompt import TimedWord
from lalm.subtitles import (
    Cue,
    format_srt,
    format_timestamp,
    format_vtt,
    group_cues,
    transcript_cues,
)

WORDS = [
    TimedWord("Hello", 0.0, 0.42),
    TimedWord("there,", 0.5, 0.91),
    TimedWord("general", 0.95, 1.4),
    TimedWord("Kenobi.", 1.45, 2.0),
    TimedWord("It", 3.5, 3.6),  # after a 1.5-s pause: a new cue
    TimedWord("is", 3.62, 3.7),
    TimedWord("over", 3.75, 4.1),
]


def test_cues_break_at_pauses_length_and_duration() -> None:
    assert group_cues(WORDS) == [Cue(0.0, 2.0, "Hello there, general Kenobi."),
                                 Cue(3.5, 4.1, "It is over")]
    assert group_cues(WORDS, max_chars=12) == [
        Cue(0.0, 0.91, "Hello there,"), Cue(0.95, 1.4, "general"), Cue(1.45, 2.0, "Kenobi."),
        Cue(3.5, 4.1, "It is over")]
    assert group_cues(WORDS, max_duration_s=1.0) == [
        Cue(0.0, 0.91, "Hello there,"), Cue(0.95, 1.4, "general"), Cue(1.45, 2.0, "Kenobi."),
        Cue(3.5, 4.1, "It is over")]
    assert group_cues(WORDS, max_gap_s=10.0) == [
        Cue(0.0, 4.1, "Hello there, general Kenobi. It is over")]
    chinese = [TimedWord("你好", 0.0, 0.5), TimedWord("世界", 0.5, 1.0)]
    assert group_cues(chinese, spaceless=True) == [Cue(0.0, 1.0, "你好世界")]
    assert group_cues([]) == []


def test_a_word_longer_than_a_cue_is_its_own_cue() -> None:
    long = [TimedWord("a", 0.0, 0.1), TimedWord("x" * 50, 0.2, 0.9), TimedWord("b", 1.0, 1.1)]
    assert [c.text for c in group_cues(long)] == ["a", "x" * 50, "b"]


def test_timestamps_round_to_the_millisecond() -> None:
    assert format_timestamp(0.0) == "00:00:00,000"
    assert format_timestamp(3723.4567) == "01:02:03,457"
    assert format_timestamp(59.9996, ".") == "00:01:00.000"


def test_exact_srt() -> None:
    assert format_srt(group_cues(WORDS)) == (
        "1\n"
        "00:00:00,000 --> 00:00:02,000\n"
        "Hello there, general Kenobi.\n"
        "\n"
        "2\n"
        "00:00:03,500 --> 00:00:04,100\n"
        "It is over\n")
    assert format_srt([]) == ""


def test_exact_vtt() -> None:
    assert format_vtt(group_cues(WORDS)) == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:02.000\n"
        "Hello there, general Kenobi.\n"
        "\n"
        "00:00:03.500 --> 00:00:04.100\n"
        "It is over\n")
    assert format_vtt([]) == "WEBVTT\n"


@pytest.mark.parametrize("start,end", [(-0.1, 0.2), (1.0, 0.5), (float("nan"), 1.0)])
def test_bad_word_times_are_typed_errors(start: float, end: float) -> None:
    with pytest.raises(PromptError, match="'w'"):
        group_cues([TimedWord("w", start, end)])


@dataclass(frozen=True)
class _Segment:
    start: float
    end: float
    text: str
    words: tuple[TimedWord, ...] = ()


def test_transcript_cues_one_per_segment_or_of_timed_words() -> None:
    segments = [_Segment(0.0, 4.1, "ignored: the words are timed", tuple(WORDS)),
                _Segment(4.1, 30.0, "  a window without word times "),
                _Segment(30.0, 31.5, "  ")]
    assert transcript_cues(segments, by_words=True) == [
        *group_cues(WORDS), Cue(4.1, 30.0, "a window without word times")]
    assert transcript_cues(segments) == [  # one cue per segment, as the server
        Cue(0.0, 4.1, "ignored: the words are timed"),
        Cue(4.1, 30.0, "a window without word times")]
    assert transcript_cues([]) == []
