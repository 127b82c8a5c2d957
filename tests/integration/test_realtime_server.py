"""/v1/realtime over a real WebSocket on 127.0.0.1, with real speech fed in 100-ms chunks; and
``stream=true`` on /v1/audio/transcriptions over real HTTP, read by the real OpenAI client.

Two servers:

* a real ``lalm serve`` process on a tiny random checkpoint: the protocol, the checks every
  handshake passes (API key, Host, Origin), bad events answered by ``error`` events on a
  connection that stays usable, and each segment's transcript equal to what offline
  `Pipeline.transcribe` gives for the same samples (the realtime path is the offline path);
* the same app in this process (uvicorn on a thread) whose model run is an oracle: no lalm
  model can transcribe yet (tiny random weights write noise), so the transcriber is replaced
  by one that finds the segment's samples in the recording and writes exactly the words whose
  known times fall in them (`lalm.testing.oracle`; a word cut by a segment edge is dropped,
  heard whole or truncated, each in turn). The recording is built word by word from the Piper
  voice with known pauses (`lalm.testing.speech.speech_recording`), so every word's time is
  exact. Then every word lost or repeated at a segment boundary is the fault of the
  segmentation and stitching under test, and the transcript must be the recording's words,
  each once, in order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("fastapi")
websockets = pytest.importorskip("websockets")
from websockets.sync.client import connect  # noqa: E402

from lalm.audio import SAMPLE_RATE  # noqa: E402
from lalm.longform import Window  # noqa: E402
from lalm.prompt import TimedWord  # noqa: E402
from lalm.serve.realtime import COMPLETED, DELTA, RealtimeLimits  # noqa: E402
from lalm.serve.segment import TurnDetection, segment_recording  # noqa: E402
from lalm.testing.oracle import oracle_transcript  # noqa: E402
from lalm.testing.server import free_port, running_server, save_tiny_checkpoint  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY = "sk-realtime-test"
CHUNK = SAMPLE_RATE // 10  # 100 ms


def pcm16(audio: np.ndarray) -> bytes:
    """float samples as PCM16 little-endian bytes (what a client sends)."""
    return np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes()


def as_received(audio: np.ndarray) -> np.ndarray:
    """The samples the server decodes from `pcm16`: float32 [N]."""
    return np.frombuffer(pcm16(audio), "<i2").astype(np.float32) / 32768.0


def send_audio(ws, audio: np.ndarray) -> None:
    data = pcm16(audio)
    for i in range(0, len(data), 2 * CHUNK):
        ws.send(json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(data[i:i + 2 * CHUNK]).decode()}))


def events_until_answered(ws, n_segments: int | None = None, timeout: float = 180.0,
                          quiet_s: float = 3.0) -> list[dict]:
    """Server events until every committed segment is answered (and ``quiet_s`` pass with
    nothing new, so no segment is still to come)."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out.append(json.loads(ws.recv(timeout=quiet_s)))
        except TimeoutError:
            committed = sum(e["type"] == "input_audio_buffer.committed" for e in out)
            answered = sum(e["type"] in (COMPLETED, "conversation.item.input_audio_"
                                         "transcription.failed") for e in out)
            if committed == answered and (n_segments is None or committed >= n_segments):
                return out
    raise AssertionError(f"segments not answered in {timeout} s: {out[-5:]}")


def session_update(**turn: object) -> str:
    return json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
        "input": {"turn_detection": {"type": "server_vad", **turn}}}}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import shared_fixture

    folder = tmp_path_factory.mktemp("realtime")
    # 2048 decoder positions: room for a 30-s window (750 audio tokens)
    return save_tiny_checkpoint(folder / "tiny", shared_fixture("qwen2_audio_tokenizer"),
                                max_seq_len=2048)


@pytest.fixture(scope="module")
def server(checkpoint):
    log = checkpoint.parent / "server.log"
    with running_server(checkpoint, "--default-max-tokens", "6", "--api-key", KEY,
                        log=log) as srv:
        yield srv


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 20 s of real English (the Piper voice), with pauses between sentences."""
    from lalm.testing.speech import speech_recording

    audio, _ = speech_recording(5, seed=7)
    return np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32)])


def ws_url(base: str, query: str = "?intent=transcription") -> str:
    return base.replace("http://", "ws://") + "/v1/realtime" + query


def test_segments_transcribe_as_offline_transcription_does(server, checkpoint, speech) -> None:
    from lalm.generation import Pipeline

    with connect(ws_url(server.url), additional_headers={"Authorization": f"Bearer {KEY}"},
                 open_timeout=30) as ws:
        created = json.loads(ws.recv(timeout=30))
        assert created["type"] == "session.created"
        assert created["session"]["audio"]["input"]["format"]["rate"] == 16000
        ws.send(session_update(silence_duration_ms=400))
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"
        send_audio(ws, speech)
        out = events_until_answered(ws, n_segments=2)
    committed = [e for e in out if e["type"] == "input_audio_buffer.committed"]
    completed = {e["item_id"]: e["transcript"] for e in out if e["type"] == COMPLETED}
    started = [e for e in out if e["type"] == "input_audio_buffer.speech_started"]
    assert len(committed) >= 2 and len(started) == len(committed)
    assert [e["item_id"] for e in started] == [e["item_id"] for e in committed]
    assert committed[0]["previous_item_id"] is None
    assert [e["previous_item_id"] for e in committed[1:]] == [e["item_id"]
                                                              for e in committed[:-1]]
    # the realtime path is the offline path: the same samples give the same transcript
    received = as_received(speech)
    pipe = Pipeline.from_pretrained(checkpoint)
    clips = [received[e["audio_start_ms"] * 16:e["audio_end_ms"] * 16] for e in committed]
    offline = pipe.transcribe(clips, long_form=None, max_new_tokens=6)
    assert [completed[e["item_id"]] for e in committed] == [r.text.strip() for r in offline]
    assert any(completed.values())  # the tiny model writes something: the test can fail
    for item, transcript in completed.items():  # deltas as the tokens came, adding up
        deltas = [e["delta"] for e in out if e["type"] == DELTA and e["item_id"] == item]
        assert "".join(deltas) == transcript
    assert sum(e["type"] == DELTA for e in out) > len(committed)


def test_bad_events_get_errors_and_the_connection_stays_usable(server) -> None:
    with connect(ws_url(server.url), subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"],
                 open_timeout=30) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        bad = ["{not json", json.dumps({"type": "response.create"}),
               json.dumps({"type": "input_audio_buffer.append", "audio": "@@@",
                           "event_id": "mine"}),
               json.dumps({"type": "input_audio_buffer.append",
                           "audio": base64.b64encode(b"\x01\x02\x03").decode()}),
               json.dumps({"type": "session.update", "session": {"audio": {"input": {
                   "transcription": {"model": "gpt-4o-transcribe"}}}}})]
        for event in bad:
            ws.send(event)
        ws.send(b"\x00\x01")  # a binary frame
        errors = [json.loads(ws.recv(timeout=30)) for _ in range(len(bad) + 1)]
        assert [e["type"] for e in errors] == ["error"] * (len(bad) + 1)
        assert [e["error"]["code"] for e in errors] == [
            "invalid_json", "invalid_event_type", "invalid_base64", "invalid_audio",
            "model_not_found", "invalid_event"]
        assert errors[2]["error"]["event_id"] == "mine"
        ws.send(session_update(silence_duration_ms=300))  # still usable
        assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"


def test_handshakes_pass_the_key_host_and_origin_checks(server) -> None:
    from websockets.exceptions import InvalidStatus

    good = {"Authorization": f"Bearer {KEY}"}
    refused = [
        {},  # no key
        {"Authorization": "Bearer wrong"},
        {**good, "Origin": "http://evil.example"},  # a page elsewhere
    ]
    for headers in refused:
        with pytest.raises(InvalidStatus) as e:
            connect(ws_url(server.url), additional_headers=headers, open_timeout=30)
        assert e.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(ws_url(server.url).replace("127.0.0.1", "localhost"),
                additional_headers={**good, "Host": "attacker.example"}, open_timeout=30)
    with connect(ws_url(server.url), additional_headers={
            **good, "Origin": server.url}, open_timeout=30) as ws:  # the server's own page
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
    with connect(ws_url(server.url, ""), additional_headers=good, open_timeout=30) as ws:
        event = json.loads(ws.recv(timeout=30))
        assert event["type"] == "error" and event["error"]["code"] == "unsupported_intent"
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            ws.recv(timeout=30)


# ---------------------------------------------------------------------------- oracle


class InProcessServer:
    """The real app (`build_asgi`) under uvicorn on a thread, its model run replaced."""

    def __init__(self, checkpoint, realtime: RealtimeLimits, transcribe) -> None:
        import uvicorn
        from fastapi import FastAPI

        from lalm.generation import Pipeline
        from lalm.serve.app import ServerConfig, build_asgi

        asgi = build_asgi(Pipeline.from_pretrained(checkpoint),
                          ServerConfig("tiny", realtime=realtime))
        app = asgi
        while not isinstance(app, FastAPI):  # under the middleware layers
            app = app.app
        app.state.transcribe_segment = transcribe
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class Oracle:
    """Writes the words whose exact times fall in the samples it is given, found in the
    recording by their bytes (PCM16 as received)."""

    def __init__(self, audio: np.ndarray, truth: list[TimedWord], partial: str) -> None:
        self.recording = pcm16(audio)
        self.truth, self.partial = truth, partial
        self.windows: list[Window] = []

    async def __call__(self, samples: np.ndarray, language: str, partial) -> str:
        data = np.round(samples * 32768).astype("<i2").tobytes()
        await asyncio.sleep(0)
        if not samples.any():  # silence only: it could be any pause, and holds no word
            return ""
        at = self.recording.find(data)
        while at % 2:  # a match between samples: look further
            at = self.recording.find(data, at + 1)
        assert at >= 0, "a segment that is not a stretch of the recording"
        window = Window(at // 2, at // 2 + samples.shape[0])
        self.windows.append(window)
        return oracle_transcript(self.truth, window, self.partial, timestamps=False)


@pytest.fixture(scope="module")
def long_speech() -> dict[str, tuple[np.ndarray, list[TimedWord]]]:
    """Real English, each word's times exact: "paused", about 55 s of sentences with pauses
    between words (40-160 ms) and sentences (0.4-0.9 s); "run-on", the same words without any
    pause (about 37 s), where every cut in running speech falls inside a word."""
    from lalm.testing.speech import speech_recording

    audio, truth = speech_recording(14, seed=2026)
    pieces, words, pos = [np.zeros(SAMPLE_RATE // 2, np.float32)], [], SAMPLE_RATE // 2
    for w in truth:
        piece = audio[round(w.start * SAMPLE_RATE):round(w.end * SAMPLE_RATE)]
        pieces.append(piece)
        words.append(TimedWord(w.word, pos / SAMPLE_RATE, (pos + piece.shape[0]) / SAMPLE_RATE))
        pos += piece.shape[0]
    return {"paused": (audio, truth), "run-on": (np.concatenate(pieces), words)}


CASES = {  # name: (recording, realtime limits, turn detection)
    "pauses": ("paused", RealtimeLimits(), {"silence_duration_ms": 500}),
    # cut in sentence pauses (>= 200 ms), or with overlap between words
    "gaps": ("paused", RealtimeLimits(max_segment_s=6.0), {"silence_duration_ms": 3000}),
    "overlaps": ("run-on", RealtimeLimits(max_segment_s=6.0, overlap_s=2.0),
                 {"silence_duration_ms": 3000}),
}


@pytest.mark.parametrize("case, partial", [("pauses", "drop"), ("gaps", "drop"),
                                           ("overlaps", "drop"), ("overlaps", "heard"),
                                           ("overlaps", "truncated")])
def test_long_real_speech_loses_and_repeats_no_word(checkpoint, long_speech, case,
                                                    partial) -> None:
    recording, limits, turn = CASES[case]
    audio, truth = long_speech[recording]
    assert audio.shape[0] >= 35 * SAMPLE_RATE and len(truth) >= 90
    # silence at the end long enough to end the last segment
    audio = np.concatenate([audio, np.zeros(turn["silence_duration_ms"] * 16, np.float32)])
    oracle = Oracle(audio, truth, partial)
    with InProcessServer(checkpoint, limits, oracle) as srv:
        with connect(ws_url(srv.url), open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
            ws.send(session_update(**turn))
            assert json.loads(ws.recv(timeout=30))["type"] == "session.updated"
            send_audio(ws, audio)
            out = events_until_answered(ws)
    committed = [e for e in out if e["type"] == "input_audio_buffer.committed"]
    items = [e["item_id"] for e in committed]
    transcripts = {e["item_id"]: e["transcript"] for e in out if e["type"] == COMPLETED}
    assert list(transcripts) == items and len(items) >= 4
    words = " ".join(transcripts[i] for i in items if transcripts[i]).split()
    assert words == [w.word for w in truth]  # every word once, in order
    for item in items:  # an item's deltas concatenate to its transcript
        assert "".join(e["delta"] for e in out if e["type"] == DELTA
                       and e["item_id"] == item) == transcripts[item]
    # the segments are the ones the segmenter cuts from the whole recording offline: the
    # transport (chunks, base64, the socket) changes nothing
    offline = segment_recording(as_received(audio), replace(TurnDetection(), **turn),
                                limits.max_segment_s, limits.overlap_s, limits.min_gap_ms)
    assert [(e["audio_start_ms"], e["audio_end_ms"]) for e in committed] == [
        (s.start_ms, s.end_ms) for s in offline]
    assert [(w.start, w.end) for w in oracle.windows] == [(s.start, s.end) for s in offline
                                                          if s.samples.any()]
    edges = [(s.end / SAMPLE_RATE, s.overlapped) for s in offline]
    cut = [w.word for w in truth for e, overlapped in edges
           if w.start < e < w.end and not overlapped]
    assert cut == []  # a boundary without overlap never falls inside a word
    if case == "overlaps":  # the stitching was exercised: cuts inside words, overlapped
        inside = [e for e, overlapped in edges if overlapped
                  and any(w.start < e < w.end for w in truth)]
        assert len(inside) >= 5
    elif case == "pauses":
        assert not any(overlapped for _, overlapped in edges)


# ---------------------------------------------------------------------------- stream=true


def test_transcription_streams_openai_events(server, speech, long_speech) -> None:
    """The real OpenAI client reads the stream: deltas, then done; the deltas concatenate to
    the done text, which is the non-streamed transcript (a clip sent whole, whose tokens
    stream, and a 55-s recording transcribed window by window)."""
    openai = pytest.importorskip("openai")
    from lalm.testing.server import encode_wav

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    whole = encode_wav(speech[:8 * SAMPLE_RATE])
    windowed = encode_wav(long_speech["paused"][0])
    for name, wav, min_deltas in (("short.wav", whole, 2), ("long.wav", windowed, 2)):
        events = list(client.audio.transcriptions.create(model="tiny", file=(name, wav),
                                                         stream=True))
        assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
        assert events[-1].type == "transcript.text.done" and len(events) - 1 >= min_deltas
        plain = client.audio.transcriptions.create(model="tiny", file=(name, wav)).text
        assert "".join(e.delta for e in events[:-1]) == events[-1].text == plain
        assert plain  # the tiny model writes something: the comparison can fail
        usage = events[-1].usage
        assert usage.output_tokens > 0 and usage.input_tokens > 200
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="tiny", file=("short.wav", whole),
                                           stream=True, response_format="srt")
    assert info.value.body["param"] == "response_format"


def test_session_count_and_idle_limits(checkpoint) -> None:
    async def silent(samples: np.ndarray, language: str, partial) -> str:
        return ""

    limits = RealtimeLimits(max_sessions=1, idle_timeout_s=2.0)
    with InProcessServer(checkpoint, limits, silent) as srv:
        with connect(ws_url(srv.url), open_timeout=30) as first:
            assert json.loads(first.recv(timeout=30))["type"] == "session.created"
            with connect(ws_url(srv.url), open_timeout=30) as second:  # one too many
                event = json.loads(second.recv(timeout=30))
                assert event["error"]["code"] == "sessions_full"
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    second.recv(timeout=30)
            event = json.loads(first.recv(timeout=30))  # nothing sent for 2 s
            assert event["type"] == "error" and event["error"]["code"] == "idle_timeout"
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                first.recv(timeout=30)
        with connect(ws_url(srv.url), open_timeout=30) as again:  # its slot is free again
            assert json.loads(again.recv(timeout=30))["type"] == "session.created"
