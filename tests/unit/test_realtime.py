"""Realtime transcription without a network: the live segmenter (`lalm.serve.segment`) and the
session protocol (`lalm.serve.realtime.Session`).

The transcriber here is a tone oracle: each "word" is a tone burst at its own frequency, and the
oracle writes, for the samples it is given, the word of every burst it hears (its FFT peak).
Its output is a known function of the audio, so a word lost or repeated at a segment boundary
is the segmenter's or the stitcher's fault. Real speech over a real WebSocket is in
tests/integration/test_realtime_server.py.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from lalm.errors import AudioError
from lalm.serve.realtime import (
    COMPLETED,
    DELTA,
    EventError,
    RealtimeLimits,
    Session,
    Settings,
    decode_pcm16,
    updated_settings,
)
from lalm.serve.segment import (
    FRAME,
    Segmenter,
    TurnDetection,
    segment_recording,
    stitch_overlap,
)

SR = 16000
WORDS = [f"w{k}" for k in range(16)]
FREQS = [400.0 + 150.0 * k for k in range(16)]


def tone_recording(n: int, seed: int, gap_ms: tuple[int, int] = (40, 150),
                   pause_ms: tuple[int, int] = (600, 1000)) -> tuple[np.ndarray, list[tuple]]:
    """n tone-burst words in sentences of 5: (float32 [N], [(word, start, end) samples])."""
    rng = np.random.default_rng(seed)
    parts, truth, pos = [np.zeros(SR // 2, np.float32)], [], SR // 2
    for i in range(n):
        k = int(rng.integers(0, len(WORDS)))
        length = int(rng.integers(200, 500)) * SR // 1000
        t = np.arange(length) / SR
        parts.append((0.3 * np.sin(2 * np.pi * FREQS[k] * t)).astype(np.float32))
        truth.append((WORDS[k], pos, pos + length))
        pos += length
        low, high = pause_ms if i % 5 == 4 else gap_ms
        gap = int(rng.integers(low, high)) * SR // 1000
        parts.append(np.zeros(gap, np.float32))
        pos += gap
    parts.append(np.zeros(SR, np.float32))
    return np.concatenate(parts), truth


def tone_oracle(samples: np.ndarray, drop_edges: bool = False) -> str:
    """The words of the tone bursts in ``samples`` (bursts of >= 30 ms; with ``drop_edges``,
    a burst cut by either end is not heard)."""
    n = samples.shape[0] // FRAME * FRAME
    loud = np.square(samples[:n].reshape(-1, FRAME)).mean(axis=1) > 1e-4
    words, f = [], 0
    while f < loud.size:
        if not loud[f]:
            f += 1
            continue
        g = f
        while g < loud.size and loud[g]:
            g += 1
        touches = f == 0 or g == loud.size
        if g - f >= 3 and not (drop_edges and touches):
            piece = samples[f * FRAME:g * FRAME]
            spectrum = np.abs(np.fft.rfft(piece * np.hanning(piece.size)))
            peak = np.argmax(spectrum) * SR / piece.size
            words.append(WORDS[int(np.argmin([abs(peak - q) for q in FREQS]))])
        f = g
    return " ".join(words)


# ---------------------------------------------------------------------------- the segmenter


@pytest.mark.parametrize("max_segment_s, silence_ms", [(15.0, 500), (4.0, 2000)])
def test_segments_do_not_depend_on_how_the_audio_is_split(max_segment_s, silence_ms) -> None:
    audio, _ = tone_recording(30, seed=1)
    detection = TurnDetection(silence_duration_ms=silence_ms)
    whole = segment_recording(audio, detection, max_segment_s, 1.0)
    assert len(whole) >= 3
    for piece in (1, 159, 1600, 4321):
        if piece == 1:  # sample by sample: a short stretch only (slow in Python)
            got = segment_recording(audio[:SR], detection, max_segment_s, 1.0, piece=piece)
            want = segment_recording(audio[:SR], detection, max_segment_s, 1.0)
        else:
            got, want = segment_recording(audio, detection, max_segment_s, 1.0, piece=piece), whole
        assert [(s.start, s.end, s.reason) for s in got] == [(s.start, s.end, s.reason)
                                                              for s in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.samples, b.samples)


def test_pause_segments_hold_every_burst_and_cut_only_in_silence() -> None:
    audio, truth = tone_recording(30, seed=2)
    segments = segment_recording(audio, TurnDetection(), 15.0, 2.0, piece=1600)
    assert len(segments) == 6  # one per sentence (pauses >= 600 ms, silence_duration 500)
    for s in segments:
        assert s.reason == "silence" and not s.overlapped
        np.testing.assert_array_equal(s.samples, audio[s.start:s.end])
    for word, start, end in truth:  # each burst wholly inside exactly one segment
        assert sum(s.start <= start and end <= s.end for s in segments) == 1
        assert not any(s.start < start < s.end < end or start < s.start < end
                       for s in segments)


def test_long_speech_is_cut_in_gaps_between_bursts() -> None:
    audio, truth = tone_recording(40, seed=3, pause_ms=(60, 100))  # no pause >= 500 ms
    segments = segment_recording(audio, TurnDetection(), 4.0, 1.0, 30, piece=1600)
    assert len(segments) >= 4 and {s.reason for s in segments[:-1]} == {"max_length"}
    assert all(s.end - s.start <= 4 * SR and not s.overlapped for s in segments)
    for a, b in zip(segments, segments[1:]):
        assert a.end == b.start  # consecutive: nothing dropped inside speech
    for word, start, end in truth:
        assert not any(start < s.end < end for s in segments)


def test_speech_without_gaps_is_cut_with_overlap() -> None:
    t = np.arange(10 * SR) / SR
    audio = np.concatenate([np.zeros(SR // 2), 0.3 * np.sin(2 * np.pi * 500 * t),
                            np.zeros(SR)]).astype(np.float32)
    segments = segment_recording(audio, TurnDetection(), 4.0, 1.0, piece=1000)
    inside = [s for s in segments if s.end < 10.5 * SR]  # cut inside the tone
    assert len(inside) >= 3
    for a, b in zip(inside, segments[1:]):
        assert a.overlapped and a.end - b.start == SR  # 1 s of overlap
    assert not segments[-1].overlapped and segments[-1].end > 10.5 * SR


def test_commit_and_clear_without_voice_activity() -> None:
    segmenter = Segmenter(None, 10.0, 1.0)
    assert segmenter.push(np.full(SR, 0.1, np.float32)) == []
    first = segmenter.commit()
    assert (first.start, first.end, first.reason) == (0, SR, "commit")
    assert segmenter.commit() is None  # nothing since
    segmenter.push(np.full(SR // 20, 0.1, np.float32))
    assert segmenter.commit() is None  # 50 ms: too short
    segmenter.push(np.full(SR, 0.1, np.float32))
    segmenter.clear()
    segmenter.push(np.full(SR // 2, 0.1, np.float32))
    second = segmenter.commit()
    assert second.end - second.start == SR // 2  # what came before the clear is gone


def test_bad_settings_are_refused() -> None:
    with pytest.raises(AudioError, match="threshold"):
        TurnDetection(threshold=2.0)
    with pytest.raises(AudioError, match="silence_duration_ms"):
        TurnDetection(silence_duration_ms=0)
    with pytest.raises(AudioError, match="overlap_s"):
        Segmenter(TurnDetection(), 3.0, 2.0)


def test_stitch_overlap_keeps_each_word_once() -> None:
    from lalm.serve.segment import Segment

    a = Segment(0, 5 * SR, np.zeros(0, np.float32), overlapped=True)
    b = Segment(4 * SR, 9 * SR, np.zeros(0, np.float32))
    first, second = stitch_overlap(a, "one two three four five", b, "four five six seven")
    assert (first + " " + second).split() == "one two three four five six seven".split()


# ---------------------------------------------------------------------------- events


def test_pcm16_decoding() -> None:
    raw = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    np.testing.assert_allclose(decode_pcm16(base64.b64encode(raw).decode()),
                               [0, 0.5, -1, 32767 / 32768])
    for bad, code in (("%%%", "invalid_base64"), (base64.b64encode(b"abc").decode(),
                                                   "invalid_audio"), (5, "invalid_value")):
        with pytest.raises(EventError) as e:
            decode_pcm16(bad)
        assert e.value.code == code


@pytest.mark.parametrize("session, code, param", [
    ({"type": "realtime"}, "unsupported_parameter", "session.type"),
    ({"tools": [{"x": 1}]}, "unsupported_parameter", "session.tools"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
     "unsupported_parameter", "session.audio.input.format"),
    ({"audio": {"input": {"transcription": {"model": "whisper-1"}}}}, "model_not_found",
     "session.audio.input.transcription.model"),
    ({"audio": {"input": {"transcription": {"prompt": "earlier words"}}}},
     "unsupported_parameter", "session.audio.input.transcription.prompt"),
    ({"audio": {"input": {"transcription": {"language": "xx"}}}}, "unsupported_language",
     "session.audio.input.transcription.language"),
    ({"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
     "unsupported_parameter", "session.audio.input.turn_detection.type"),
    ({"audio": {"input": {"turn_detection": {"threshold": 3}}}}, "invalid_value",
     "session.audio.input.turn_detection"),
    ({"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
     "unsupported_parameter", "session.audio.input.noise_reduction"),
])
def test_session_update_refuses_what_it_cannot_honour(session, code, param) -> None:
    with pytest.raises(EventError) as e:
        updated_settings(Settings(), session, "tiny", beta=False)
    assert (e.value.code, e.value.param) == (code, param)


def test_session_update_applies_openai_fields() -> None:
    got = updated_settings(Settings(), {"type": "transcription", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000},
        "transcription": {"model": "tiny", "language": "de", "prompt": ""},
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
        "noise_reduction": None}}}, "tiny", beta=False)
    assert (got.rate, got.language, got.detection.silence_duration_ms) == (24000, "de", 800)
    beta = updated_settings(Settings(), {"input_audio_format": "pcm16",
                                         "turn_detection": None}, "tiny", beta=True)
    assert beta.rate == 24000 and beta.detection is None


def run_session(events: list[dict | str], transcribe, limits: RealtimeLimits | None = None,
                settle: int = 400) -> list[dict]:
    """Feed client events to a `Session` and return the server events once its segments are
    all answered (or after ``settle`` event-loop turns)."""
    out: list[dict] = []

    async def send(event: dict) -> None:
        out.append(event)

    async def main() -> None:
        session = Session(send, transcribe, "tiny", limits or RealtimeLimits())
        await session.start()
        for event in events:
            if session.closed:  # a limit ended it (the server closes the socket)
                break
            await session.handle(event if isinstance(event, str) else json.dumps(event))
        for _ in range(settle):
            committed = sum(e["type"] == "input_audio_buffer.committed" for e in out)
            answered = sum(e["type"] in (COMPLETED, "conversation.item.input_audio_"
                                         "transcription.failed") for e in out)
            if answered == committed:
                break
            await asyncio.sleep(0)
        await session.stop()

    asyncio.run(main())
    return out


def appends(audio: np.ndarray, chunk_s: float = 0.1) -> list[dict]:
    pcm = np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes()
    step = int(chunk_s * SR) * 2
    return [{"type": "input_audio_buffer.append",
             "audio": base64.b64encode(pcm[i:i + step]).decode()}
            for i in range(0, len(pcm), step)]


def transcripts(out: list[dict]) -> list[str]:
    return [e["transcript"] for e in out if e["type"] == COMPLETED]


@pytest.mark.parametrize("drop_edges", [False, True])
@pytest.mark.parametrize("limits", [
    RealtimeLimits(),  # cuts in the sentence pauses
    RealtimeLimits(max_segment_s=3.0, overlap_s=1.0, min_gap_ms=30),  # in gaps between bursts
    RealtimeLimits(max_segment_s=3.0, overlap_s=1.0, min_gap_ms=400),  # overlapping cuts
])
def test_session_transcript_loses_and_repeats_no_word(limits, drop_edges) -> None:
    audio, truth = tone_recording(40, seed=5)

    async def transcribe(samples: np.ndarray, language: str, partial) -> str:
        words = tone_oracle(samples, drop_edges).split()
        for n in range(1, len(words)):  # the text so far, as a model writes it
            await partial(" ".join(words[:n]))
        return " ".join(words)

    update = {"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}}}
    out = run_session([update, *appends(audio)], transcribe, limits)
    texts = transcripts(out)
    assert " ".join(t for t in texts if t).split() == [w for w, _, _ in truth]
    committed = [e for e in out if e["type"] == "input_audio_buffer.committed"]
    assert len(texts) == len(committed) >= 5
    if limits.min_gap_ms == 400:
        starts = [e["audio_start_ms"] for e in committed]
        ends = [e["audio_end_ms"] for e in committed]
        assert any(b < a for a, b in zip(ends, starts[1:]))  # overlapping segments were cut
    # the deltas of each item concatenate to its transcript (several deltas: they streamed),
    # items complete in order
    items = [e["item_id"] for e in committed]
    assert [e["item_id"] for e in out if e["type"] == COMPLETED] == items
    for e in out:
        if e["type"] == COMPLETED:
            deltas = "".join(d["delta"] for d in out if d["type"] == DELTA
                             and d["item_id"] == e["item_id"])
            assert deltas == e["transcript"]
    assert sum(e["type"] == DELTA for e in out) > len(committed) + 10


def test_bad_events_get_errors_and_the_session_goes_on() -> None:
    audio, truth = tone_recording(5, seed=6)

    async def transcribe(samples: np.ndarray, language: str, partial) -> str:
        return tone_oracle(samples)

    bad = ["not json", "[1, 2]", {"type": "response.create"},
           {"type": "input_audio_buffer.append", "audio": "%%%", "event_id": "e1"},
           {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()},
           {"type": "input_audio_buffer.commit"},
           {"type": "session.update", "session": {"audio": {"input": {
               "transcription": {"prompt": "hello"}}}}}]
    chunks = appends(audio)
    out = run_session([*bad, *chunks[:5], "{", *chunks[5:]], transcribe)
    errors = [e["error"] for e in out if e["type"] == "error"]
    assert [e["code"] for e in errors] == [
        "invalid_json", "invalid_event", "invalid_event_type", "invalid_base64",
        "invalid_audio", "input_audio_buffer_commit_empty", "unsupported_parameter",
        "invalid_json"]
    assert errors[3]["event_id"] == "e1" and errors[3]["param"] == "audio"
    assert " ".join(transcripts(out)).split() == [w for w, _, _ in truth]


def test_session_limits() -> None:
    audio, _ = tone_recording(5, seed=7)

    async def transcribe(samples: np.ndarray, language: str, partial) -> str:
        return tone_oracle(samples)

    limits = RealtimeLimits(max_session_s=1.0, max_event_bytes=10_000)
    big = {"type": "input_audio_buffer.append", "audio": "A" * 20_000}
    out = run_session([big, *appends(audio)], transcribe, limits)
    codes = [e["error"]["code"] for e in out if e["type"] == "error"]
    assert codes == ["event_too_large", "session_too_long"]


def test_a_failing_model_run_fails_its_item_only() -> None:
    audio, truth = tone_recording(10, seed=8)
    calls = []

    async def transcribe(samples: np.ndarray, language: str, partial) -> str:
        calls.append(language)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return tone_oracle(samples)

    out = run_session(appends(audio), transcribe)
    failed = [e for e in out if e["type"].endswith(".failed")]
    assert len(failed) == 1 and failed[0]["error"]["message"] == "out of memory"
    assert " ".join(transcripts(out)).split() == [w for w, _, _ in truth[5:]]


def test_24khz_audio_is_resampled() -> None:
    import soxr

    audio, truth = tone_recording(10, seed=9)
    update = {"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 24000}}}}}

    async def transcribe(samples: np.ndarray, language: str, partial) -> str:
        return tone_oracle(samples)

    out = run_session([update, *appends(soxr.resample(audio, SR, 24000))],
                      transcribe)
    assert " ".join(transcripts(out)).split() == [w for w, _, _ in truth]


def test_realtime_limits_are_checked_when_the_server_starts() -> None:
    for bad in ({"max_segment_s": 40.0}, {"overlap_s": 6.0}, {"max_session_s": 0},
                {"idle_timeout_s": -1.0}, {"max_sessions": True}):
        with pytest.raises(AudioError):
            RealtimeLimits(**bad)
