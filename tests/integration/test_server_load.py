"""1,000 requests at 32-way concurrency against a real `lalm serve` on 127.0.0.1, one in ten
malformed in one of ten ways: every valid request gets a 200, every bad one a 4xx with
OpenAI's error body naming the problem, and the server's memory stays flat."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")

from lalm.testing.server import running_server, save_tiny_checkpoint, wav_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_REQUESTS, CONCURRENCY = 1000, 32


def _chat_body(content: list[dict], **extra: object) -> bytes:
    body = {"model": "tiny", "max_tokens": 1, **extra,
            "messages": [{"role": "user", "content": content}]}
    return json.dumps(body).encode()


def _audio(data: bytes) -> dict:
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def _bodies() -> tuple[list[bytes], list[tuple[str, bytes, int]]]:
    """Valid bodies (clips of different lengths) and (kind, body, expected status) bad ones."""
    valid = [_chat_body([_audio(wav_bytes(0.3 + 0.1 * i, 300 + 50 * i, seed=i)),
                         {"type": "text", "text": f"What is clip {i}?"}]) for i in range(8)]
    clip = _audio(wav_bytes(0.5))
    bad = [
        ("malformed JSON", b'{"model": "tiny", "messages": [', 400),
        ("bad base64", _chat_body([{"type": "input_audio", "input_audio": {
            "data": "%%%not base64%%%", "format": "wav"}}]), 400),
        ("undecodable audio", _chat_body([_audio(b"RIFF but not really a wave file" * 10)]), 400),
        ("unknown model", _chat_body([clip], model="gpt-4o"), 404),
        ("max_tokens over the limit", _chat_body([clip], max_tokens=10**6), 400),
        ("too many audios", _chat_body([clip] * 9), 400),
        ("audio too long", _chat_body([_audio(wav_bytes(31.0))]), 400),
        ("no messages", json.dumps({"model": "tiny", "messages": []}).encode(), 400),
        ("unknown part type", _chat_body([{"type": "image_url", "image_url": {"url": "x"}}]),
         400),
        # batches with valid requests (same options) and fails in the worker: over max_seq_len
        ("prompt too long", _chat_body([{"type": "text", "text": "word " * 600}]), 400),
    ]
    return valid, bad


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import shared_fixture

    folder = tmp_path_factory.mktemp("load")
    model = save_tiny_checkpoint(folder / "tiny", shared_fixture("qwen2_audio_tokenizer"))
    with running_server(model, "--max-batch-size", "32", "--max-audio-seconds", "30",
                        log=folder / "server.log") as srv:
        yield srv


def test_thousand_requests_with_one_in_ten_malformed(server) -> None:
    valid, bad = _bodies()
    plan = [(None, valid[i % len(valid)], 200) if i % 10 else bad[(i // 10) % len(bad)]
            for i in range(N_REQUESTS)]
    url = f"{server.url}/v1/chat/completions"

    def send(item: tuple[str | None, bytes, int]) -> tuple[str | None, int, int, dict]:
        kind, body, expected = item
        status, reply = _post(url, body)
        return kind, expected, status, reply

    warm, rest = plan[:300], plan[300:]
    start = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(send, warm))
        rss_warm = server.rss_bytes()
        outcomes += list(pool.map(send, rest))
    seconds = time.monotonic() - start
    rss_end = server.rss_bytes()

    failures = [(kind, expected, status, reply) for kind, expected, status, reply in outcomes
                if status != expected]
    assert not failures, failures[:5]
    for kind, _, status, reply in outcomes:
        if kind is None:
            assert reply["choices"][0]["message"]["content"] is not None
            assert reply["usage"]["completion_tokens"] == 1
        else:
            assert reply["error"]["message"] and reply["error"]["type"], kind
    assert len(outcomes) == N_REQUESTS
    assert seconds < 180, f"{N_REQUESTS} requests took {seconds:.1f} s"
    # flat memory: after warm-up, 700 more requests (about 25 MB of bodies) may not grow
    # the server by > 32 MiB (measured: +3 to +20 MiB, depending on machine load)
    assert rss_end - rss_warm < 32 * 2**20, (rss_warm, rss_end)
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'route="/v1/chat/completions",status="200"} 900' in metrics
    print(f"{N_REQUESTS} requests in {seconds:.1f} s ({N_REQUESTS / seconds:.0f}/s); "
          f"RSS {rss_warm / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB")
