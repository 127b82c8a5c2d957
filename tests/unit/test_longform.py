"""lalm.longform on synthetic arrays: chat windows and their token cost, window planning, VAD,
and stitching checked word for word against exact timings.

The transcriber in the stitching tests is an oracle (`lalm.testing.oracle`): it writes, for a
window, exactly the words whose times fall in it, as SRWT text that `parse_output` reads back.
No trained model exists yet, and with a perfect transcriber every lost or duplicated word is the
stitcher's fault. Words cut by a window edge are the case a real model decides for itself, so
every stitching test runs with each choice: not heard, heard whole, heard truncated.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lalm.audio import SAMPLE_RATE, audio_token_count, batch_log_mel
from lalm.errors import AudioError
from lalm.longform import (
    TOKENS_PER_SECOND,
    Window,
    chat_audio_token_count,
    join_window_rows,
    measure_loudness,
    plan_windows,
    speech_regions,
    split_for_chat,
    stitch_texts,
    stitch_words,
    window_clips,
)
from lalm.prompt import Task, TaskSpec, TimedWord, parse_output
from lalm.testing.models import random_model
from lalm.testing.oracle import oracle_transcript

PARTIAL = ("drop", "heard", "truncated")
SRWT = TaskSpec(Task.TRANSCRIBE, "en", "en", timestamps=True)


def make_truth(seed: int, seconds: float, pause_every: int | None = 8) -> list[TimedWord]:
    """Words w<i> of 0.15-0.8 s with 40-160 ms joins and, every ``pause_every`` words, a
    0.4-1.0 s pause; distinct names so that any duplicate or loss shows."""
    rng = np.random.default_rng(seed)
    words, t, i = [], float(rng.uniform(0.2, 1.0)), 0
    while True:
        length = float(rng.uniform(0.15, 0.8))
        if t + length > seconds - 0.2:
            return words
        words.append(TimedWord(f"w{i}", t, t + length))
        long_pause = pause_every is not None and i % pause_every == pause_every - 1
        t += length + float(rng.uniform(0.4, 1.0) if long_pause else rng.uniform(0.04, 0.16))
        i += 1


def render(truth: list[TimedWord], seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts where the words are, digital silence elsewhere: float32 [N]."""
    rng = np.random.default_rng(seed)
    audio = np.zeros(round(seconds * SAMPLE_RATE), np.float32)
    for w in truth:
        a, b = round(w.start * SAMPLE_RATE), round(w.end * SAMPLE_RATE)
        audio[a:b] = rng.uniform(-0.3, 0.3, b - a)
    return audio


def transcribe(truth: list[TimedWord], windows: list[Window], partial: str) -> list[TimedWord]:
    """Oracle SRWT per window -> parse_output -> stitch_words."""
    words = [parse_output(oracle_transcript(truth, w, partial), SRWT).words for w in windows]
    return stitch_words(windows, words)


def assert_same_words(got: list[TimedWord], truth: list[TimedWord]) -> None:
    assert [w.word for w in got] == [w.word for w in truth]
    for g, t in zip(got, truth):  # SRWT times are on the 0.01 s grid
        assert abs(g.start - t.start) <= 0.005 + 1e-9 and abs(g.end - t.end) <= 0.005 + 1e-9


# ---------------------------------------------------------------------------------- chat


@pytest.mark.parametrize("seconds", [0.5, 30.0, 30.0001, 61.0, 179.99])
def test_split_for_chat_covers_the_clip_in_windows_of_at_most_30s(seconds: float) -> None:
    audio = np.random.default_rng(0).standard_normal(round(seconds * SAMPLE_RATE)).astype("f4")
    windows = split_for_chat(audio)
    assert np.array_equal(np.concatenate(windows), audio)
    assert len(windows) == -(-audio.size // (30 * SAMPLE_RATE))
    assert all(w.size <= 30 * SAMPLE_RATE for w in windows)
    assert all(w.size % 640 == 0 for w in windows[:-1])  # no audio token split across windows
    assert min(w.size for w in windows) >= min(audio.size, 15 * SAMPLE_RATE) - 640 * len(windows)
    expected = sum(audio_token_count(w.size // 160) for w in windows)
    assert chat_audio_token_count(audio.size) == expected


@pytest.mark.parametrize("minutes", [1, 2, 5])
def test_chat_cost_is_1500_tokens_per_minute(minutes: int) -> None:
    n = minutes * 60 * SAMPLE_RATE
    assert chat_audio_token_count(n) == 1500 * minutes == TOKENS_PER_SECOND * 60 * minutes
    assert chat_audio_token_count(30 * SAMPLE_RATE) == 750


def test_chat_limit_is_an_error_never_a_truncation() -> None:
    audio = np.zeros(301 * SAMPLE_RATE, np.float32)
    with pytest.raises(AudioError, match=r"301.00 s is longer than .*max_duration_s=300"):
        split_for_chat(audio)
    assert len(split_for_chat(audio, max_duration_s=None)) == 11
    with pytest.raises(AudioError, match="max_duration_s=60"):
        split_for_chat(np.zeros(61 * SAMPLE_RATE, np.float32), max_duration_s=60)


@pytest.mark.parametrize("bad, problem", [
    (np.zeros((2, 100), np.float32), "expected 1-D float samples"),
    (np.zeros(100, np.int16), "expected 1-D float samples"),
    ([0.0] * 100, "expected 1-D float samples"),
    (np.zeros(0, np.float32), "no audio samples"),
])
def test_bad_waveforms_are_named(bad: object, problem: str) -> None:
    for planner in (split_for_chat, plan_windows, speech_regions):
        with pytest.raises(AudioError, match=f"audio: {problem}"):
            planner(bad)  # type: ignore[operator]


@pytest.mark.parametrize("window", [0.0, 31.0, float("nan"), True])
def test_bad_window_lengths_are_named(window: float) -> None:
    with pytest.raises(AudioError, match="max_window_s"):
        split_for_chat(np.zeros(100, np.float32), max_window_s=window)
    with pytest.raises(AudioError, match="window_s"):
        plan_windows(np.zeros(100, np.float32), window_s=window)


@pytest.mark.parametrize("preset, framed", [("tiny-random", False), ("tiny-random-v1", True)])
def test_windowed_clip_gives_one_span_of_the_counted_rows(preset: str, framed: bool) -> None:
    """The model's rows for the windows, joined, fill exactly the slots the count promises, in
    window order, with one BOS/EOS pair per clip for v1."""
    model = random_model(preset)
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, 25 * SAMPLE_RATE).astype("f4")
    windows = split_for_chat(audio, max_window_s=10.0)
    assert len(windows) == 3
    with torch.no_grad():
        rows = model.embed_audio(*batch_log_mel(windows, model.config.encoder.n_mels))
        alone = model.embed_audio(*batch_log_mel(windows[1:2], model.config.encoder.n_mels))[0]
    joined = join_window_rows(rows, boundary_rows=framed)
    n = chat_audio_token_count(audio.size, max_window_s=10.0)
    assert n == 25 * TOKENS_PER_SECOND
    assert joined.shape == (n + 2 * framed, model.config.decoder.dim)
    start = rows[0].shape[0] - framed  # the second window's frames follow the first's
    frames = alone[1:-1] if framed else alone
    torch.testing.assert_close(joined[start:start + frames.shape[0]], frames)
    if framed:
        bos, eos = model.projector.audio_bos_eos
        torch.testing.assert_close(joined[0], bos)
        torch.testing.assert_close(joined[-1], eos)
        assert not any(torch.equal(r, bos) for r in joined[1:-1])


def test_join_window_rows_errors() -> None:
    with pytest.raises(AudioError, match="at least one window"):
        join_window_rows([], boundary_rows=False)
    with pytest.raises(AudioError, match="BOS and EOS"):
        join_window_rows([torch.zeros(3, 4), torch.zeros(1, 4)], boundary_rows=True)


# ---------------------------------------------------------------------------------- planning


@pytest.mark.parametrize("seconds", [10.0, 30.0, 31.0, 55.5, 307.3])
def test_fixed_windows_cover_with_overlap(seconds: float) -> None:
    n = round(seconds * SAMPLE_RATE)
    windows = plan_windows(np.zeros(n, np.float32), window_s=30.0, overlap_s=5.0)
    assert windows[0].start == 0 and windows[-1].end == n
    assert all(w.end - w.start <= 30 * SAMPLE_RATE and w.start % 160 == 0 for w in windows)
    assert all(b.start < a.end and a.end - b.start >= 5 * SAMPLE_RATE
               for a, b in itertools.pairwise(windows))
    assert windows[-1].end - windows[-1].start > min(n, 30 * SAMPLE_RATE) - 160  # no sliver


def test_speech_regions_find_bursts_and_join_short_pauses() -> None:
    truth = [TimedWord("a", 1.0, 2.0), TimedWord("b", 2.1, 3.0), TimedWord("c", 4.0, 4.5)]
    audio = render(truth, 6.0)
    assert speech_regions(audio) == [(16000, 48000), (64000, 72000)]
    assert speech_regions(audio, min_silence_s=0.05) == [(16000, 32000), (33600, 48000),
                                                         (64000, 72000)]
    assert speech_regions(np.zeros(32000, np.float32)) == []
    noisy = audio + np.random.default_rng(2).normal(0, 0.003, audio.size).astype("f4")
    found = speech_regions(noisy)
    assert len(found) == 2 and all(abs(a - b) <= 320 for a, b in zip(found[0], (16000, 48000)))


def test_vad_windows_meet_in_pauses() -> None:
    truth = make_truth(3, 200.0)
    audio = render(truth, 200.0)
    windows = plan_windows(audio, speech=speech_regions(audio))
    assert len(windows) >= 7
    for a, b in itertools.pairwise(windows):
        assert a.end <= b.start  # no overlap needed: every cut is a pause
        assert not any(w.start < b.start_s and w.end > a.end_s for w in truth)
    assert all(w.end - w.start <= 30 * SAMPLE_RATE for w in windows)
    assert windows[0].start_s <= truth[0].start and windows[-1].end_s >= truth[-1].end


def test_vad_windows_overlap_where_speech_runs_on() -> None:
    truth = make_truth(4, 100.0, pause_every=None)  # 100 s without a 0.3-s pause
    audio = render(truth, 100.0)
    windows = plan_windows(audio, speech=speech_regions(audio), overlap_s=4.0)
    assert len(windows) == 4
    assert all(a.end - b.start == 4 * SAMPLE_RATE for a, b in itertools.pairwise(windows))


def test_vad_merges_overlapping_regions_of_other_detectors() -> None:
    audio = render([TimedWord("a", 0.0, 40.0), TimedWord("b", 45.0, 50.0)], 60.0)
    speech = [(0, 40 * SAMPLE_RATE), (10 * SAMPLE_RATE, 12 * SAMPLE_RATE),
              (45 * SAMPLE_RATE, 50 * SAMPLE_RATE)]
    windows = plan_windows(audio, speech=speech)
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 30.0), (25.0, 50.2)]  # no cut at 12


def test_vad_skips_long_silence() -> None:
    truth = [TimedWord("a", 1.0, 20.0), TimedWord("b", 100.0, 110.0)]
    audio = render(truth, 120.0)
    windows = plan_windows(audio, speech=speech_regions(audio))
    assert [(w.start_s, w.end_s) for w in windows] == [(0.8, 20.2), (99.8, 110.2)]


def _blocks(audio: np.ndarray, sizes: list[int], pulled: list[int]):
    """``audio`` in consecutive blocks of the given sizes (cycled), counting samples handed out
    in ``pulled[0]``: the stream `lalm.audio.stream_audio` gives, for a recording in memory."""
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= audio.shape[0]:
            return
        block = audio[pos:pos + size].copy()
        pos += block.shape[0]
        pulled[0] += block.shape[0]
        yield block


@pytest.mark.parametrize("sizes", [[1], [15999, 161, 7], [2**18], [16000 * 50]])
def test_planning_from_blocks_equals_planning_from_samples(sizes: list[int]) -> None:
    truth = make_truth(8, 200.0)
    audio = render(truth, 200.0, seed=3)
    n = audio.shape[0]
    if sizes == [1]:
        audio, n = audio[:4001], 4001  # one sample per block: keep it short
    pulled = [0]
    loudness = measure_loudness(_blocks(audio, sizes, pulled))
    assert loudness.n_samples == n and pulled[0] == n
    np.testing.assert_array_equal(loudness.power, measure_loudness([audio]).power)
    assert speech_regions(loudness) == speech_regions(audio)
    for speech in (None, speech_regions(audio)):
        if n > 30 * SAMPLE_RATE:
            assert plan_windows(loudness, speech=speech) == plan_windows(audio, speech=speech)


@pytest.mark.parametrize("sizes", [[15999, 161, 7], [2**18], [16000 * 50]])
@pytest.mark.parametrize("vad", [False, True])
def test_window_clips_cut_exact_windows_holding_one_window_and_a_block(sizes: list[int],
                                                                        vad: bool) -> None:
    truth = [TimedWord("a", 1.0, 50.0), TimedWord("b", 150.0, 190.0)]  # 100 s of silence
    audio = render(truth, 200.0, seed=4)
    windows = plan_windows(audio, speech=speech_regions(audio) if vad else None)
    pulled = [0]
    for window, clip in zip(windows, window_clips(_blocks(audio, sizes, pulled), windows),
                            strict=True):
        np.testing.assert_array_equal(clip, window.clip(audio))
        assert pulled[0] < window.end + max(sizes)  # decoded no further than this window
    with pytest.raises(AudioError, match="ends before window"):
        list(window_clips([audio[:1000]], [Window(0, 2000)]))


# ---------------------------------------------------------------------------------- stitching


@pytest.mark.parametrize("partial", PARTIAL)
@pytest.mark.parametrize("overlap", [2.0, 5.0, 15.0])
def test_stitch_fixed_windows_exact(partial: str, overlap: float) -> None:
    truth = make_truth(5, 303.0)
    windows = plan_windows(np.zeros(303 * SAMPLE_RATE, np.float32), overlap_s=overlap)
    cut = [w for w in truth for win in windows if w.start < win.end_s < w.end]
    assert cut, "some words must straddle a window edge for the test to mean anything"
    assert_same_words(transcribe(truth, windows, partial), truth)


@pytest.mark.parametrize("partial", PARTIAL)
@pytest.mark.parametrize("pause_every", [8, None])
def test_stitch_vad_windows_exact(partial: str, pause_every: int | None) -> None:
    truth = make_truth(6, 190.0, pause_every)
    audio = render(truth, 190.0)
    windows = plan_windows(audio, speech=speech_regions(audio))
    assert_same_words(transcribe(truth, windows, partial), truth)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.floats(4.0, 30.0), share=st.floats(0.1, 0.5),
       seconds=st.floats(1.0, 200.0), partial=st.sampled_from(PARTIAL))
def test_stitch_exact_for_any_fixed_plan(seed: int, window: float, share: float, seconds: float,
                                         partial: str) -> None:
    """Any window length and overlap of at least 1 s (longer than any word) is exact."""
    truth = make_truth(seed, seconds, pause_every=None)
    overlap = max(1.0, share * window)
    windows = plan_windows(np.zeros(round(seconds * SAMPLE_RATE), np.float32), window_s=window,
                           overlap_s=overlap)
    assert_same_words(transcribe(truth, windows, partial), truth)


def test_stitch_drops_the_second_copy_when_speech_fills_the_overlap() -> None:
    """No pause in the overlap and times that disagree by 20 ms: the word at the cut is
    claimed by both windows, and kept once."""
    a, b = Window(0, 10 * SAMPLE_RATE), Window(8 * SAMPLE_RATE, 18 * SAMPLE_RATE)
    words_a = [TimedWord("x", 7.5, 8.6), TimedWord("Hello,", 8.6, 9.02), TimedWord("y", 9.02,
                                                                                    10.0)]
    words_b = [TimedWord("x", 0.0, 0.6), TimedWord("hello", 0.6, 1.0), TimedWord("y", 1.0, 2.0),
               TimedWord("z", 2.0, 3.0)]
    got = stitch_words([a, b], [words_a, words_b])
    assert [w.word for w in got] == ["x", "Hello,", "y", "z"]
    assert got[-1] == TimedWord("z", 10.0, 11.0)


def test_stitch_checks_its_inputs() -> None:
    windows = [Window(0, 100), Window(50, 150)]
    with pytest.raises(AudioError, match="2 windows but 1 word lists"):
        stitch_words(windows, [[]])
    with pytest.raises(AudioError, match="windows must advance"):
        stitch_texts(windows[::-1], ["a", "b"])
    with pytest.raises(AudioError, match="start < end"):
        Window(10, 10)


@pytest.mark.parametrize("partial", PARTIAL)
def test_stitch_texts_fixed_windows_exact(partial: str) -> None:
    truth = make_truth(7, 240.0)
    windows = plan_windows(np.zeros(240 * SAMPLE_RATE, np.float32))
    texts = [oracle_transcript(truth, w, partial, timestamps=False) for w in windows]
    assert stitch_texts(windows, texts) == " ".join(w.word for w in truth)


def test_stitch_texts_spaceless_and_unmatched() -> None:
    windows = [Window(0, 10 * SAMPLE_RATE), Window(8 * SAMPLE_RATE, 18 * SAMPLE_RATE)]
    assert stitch_texts(windows, ["今天天气很好我们", "我们去公园"], spaceless=True) == \
        "今天天气很好我们去公园"
    assert stitch_texts(windows, ["one two", "three four"]) == "one two three four"
    assert stitch_texts(windows, ["", "three four"]) == "three four"
