"""200 requests at 32-way concurrency against a real `lalm serve` on 127.0.0.1, one in ten
malformed in one of ten ways: every valid request gets a 200 with its one token, every bad one
a 4xx with OpenAI's error body naming the problem, and the metrics count them all. Counts
only: the time and memory of such a run are `bench/bench_serve.py --load`'s figures."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")

from lalm.testing.server import mixed_chat_bodies, post_json, running_server, save_tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_REQUESTS, CONCURRENCY = 200, 32  # every malformed kind twice


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import shared_fixture

    folder = tmp_path_factory.mktemp("load")
    model = save_tiny_checkpoint(folder / "tiny", shared_fixture("qwen2_audio_tokenizer"))
    with running_server(model, "--max-batch-size", "32", "--max-audio-seconds", "30",
                        log=folder / "server.log") as srv:
        yield srv


def test_requests_with_one_in_ten_malformed_all_get_their_answer(server) -> None:
    valid, bad = mixed_chat_bodies()
    plan = [(None, valid[i % len(valid)], 200) if i % 10 else bad[(i // 10) % len(bad)]
            for i in range(N_REQUESTS)]
    url = f"{server.url}/v1/chat/completions"

    def send(item: tuple[str | None, bytes, int]) -> tuple[str | None, int, int, dict]:
        kind, body, expected = item
        status, reply = post_json(url, body, timeout=600)
        return kind, expected, status, reply

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(send, plan))

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
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    n_valid = N_REQUESTS - N_REQUESTS // 10
    assert f'route="/v1/chat/completions",status="200"}} {n_valid}' in metrics
    assert server.metrics()["lalm_failed_jobs_total"] == 0  # bad input never reached a batch
