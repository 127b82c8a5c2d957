"""lalm.serve without HTTP: the allowlist rules, request options under limits, subtitle
formats, and the batcher (shared batches equal single runs; a bad job fails alone)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydantic")

from lalm.config import ModelConfig
from lalm.generation import GenerationOptions, Pipeline
from lalm.prompt import AudioPart, Message, TextPart
from lalm.serve import ApiError, AudioAccess, Batcher, Limits
from lalm.serve.app import served_model_name
from lalm.serve.batcher import BatchStats, Done, Failed, Token
from lalm.serve.budget import PromptBudget
from lalm.serve.middleware import default_allowed_hosts, host_name
from lalm.serve.inputs import chat_options, decode_base64
from lalm.serve.schemas import ChatCompletionRequest
from lalm.testing.models import random_model
from lalm.tokenizer import load_tokenizer


@pytest.mark.parametrize("url, allowed", [
    ("http://127.0.0.1:8000/audio/a.wav", True),
    ("http://127.0.0.1:8000/audio", True),
    ("http://127.0.0.1:8000/audiox/a.wav", False),  # look-alike prefix
    ("http://127.0.0.1:8001/audio/a.wav", False),  # other port
    ("https://127.0.0.1:8000/audio/a.wav", False),  # other scheme
    ("http://127.0.0.1.evil.org:8000/audio/a.wav", False),
    ("http://u:p@127.0.0.1:8000/audio/a.wav", False),
    ("http://127.0.0.1:8000/audio/../etc/passwd", False),
    ("http://127.0.0.1:8000/audio/%2E%2E/etc/passwd", False),
    ("http://127.0.0.1:8000/audio/..%5Cetc", False),
])
def test_url_allowlist(url: str, allowed: bool) -> None:
    assert AudioAccess(("http://127.0.0.1:8000/audio",)).url_allowed(url) is allowed
    assert AudioAccess().url_allowed(url) is False


def test_path_allowlist(tmp_path: Path) -> None:
    access = AudioAccess(directories=(tmp_path / "ok",))
    assert access.path_allowed((tmp_path / "ok" / "a.wav").resolve())
    assert not access.path_allowed((tmp_path / "ok" / ".." / "a.wav").resolve())
    assert not access.path_allowed((tmp_path / "okay" / "a.wav").resolve())


def test_base64_and_options_errors_name_the_field() -> None:
    with pytest.raises(ApiError) as info:
        decode_base64("a b c ! ", "messages[0].content[0].input_audio.data")
    assert info.value.status == 400 and info.value.param.endswith("input_audio.data")
    assert decode_base64("aGVs\nbG8=", "x") == b"hello"
    limits = Limits(max_new_tokens=50, default_max_tokens=7)
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    assert chat_options(body, GenerationOptions(), limits).max_new_tokens == 7
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                 max_tokens=51, stop=["a"])
    with pytest.raises(ApiError, match="max_tokens: 51"):
        chat_options(body, GenerationOptions(), limits)
    body = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                 max_completion_tokens=9, temperature=0.5, stop="END")
    options = chat_options(body, GenerationOptions(), limits)
    assert (options.max_new_tokens, options.temperature, options.stop_sequences) == (
        9, 0.5, ("END",))


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    from conftest import shared_fixture

    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    return Pipeline(random_model(config, seed=3),
                    load_tokenizer(shared_fixture("qwen2_audio_tokenizer")))


def test_batcher_shares_batches_and_isolates_a_bad_job(pipe: Pipeline) -> None:
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000, 16000)]
    requests = [pipe.chat_request([Message("user", (AudioPart(c), TextPart(f"Clip {i}?")))])
                for i, c in enumerate(clips)]
    too_long = pipe.chat_request("word " * 600)  # > max_seq_len 512 tokens with the answer
    options = GenerationOptions(max_new_tokens=4)
    alone = pipe.generate(requests, options, batch_size=1)

    async def run() -> list:
        batcher = Batcher(pipe, max_batch_size=8, batch_wait_s=0.05)
        batcher.start()
        try:
            tickets = [batcher.submit(r, options, 60.0) for r in [*requests[:2], too_long,
                                                                  requests[2]]]
            return [await t.get(60.0) for t in tickets]
        finally:
            batcher.close()
            assert batcher.stats.batches >= 2 and batcher.stats.failed_jobs == 1

    events = asyncio.run(run())
    assert isinstance(events[2], Failed) and "max_seq_len" in str(events[2].error)
    done = [e for e in events if isinstance(e, Done)]
    assert [d.result.tokens for d in done] == [r.tokens for r in alone]
    assert [d.result.text for d in done] == [r.text for r in alone]


def test_sampled_jobs_with_distinct_seeds_share_a_batch_and_equal_single_runs(
        pipe: Pipeline) -> None:
    requests = [pipe.chat_request(q) for q in ("Tell me a story.", "Tell me a story.",
                                                "What is this?")]
    sampled = GenerationOptions(max_new_tokens=6, temperature=1.0)
    seeds = (1, 2, 3)
    alone = [pipe.generate([r], replace(sampled, seed=seed))[0]
             for r, seed in zip(requests, seeds)]

    async def run() -> list:
        batcher = Batcher(pipe, max_batch_size=8, batch_wait_s=0.05)
        batcher.start()
        try:
            tickets = [batcher.submit(r, replace(sampled, seed=seed), 60.0)
                       for r, seed in zip(requests, seeds)]
            return [await t.get(60.0) for t in tickets]
        finally:
            batcher.close()
            assert (batcher.stats.batches, batcher.stats.rows) == (1, 3)

    done = asyncio.run(run())
    assert [d.result.tokens for d in done] == [r.tokens for r in alone]
    assert alone[0].tokens != alone[1].tokens  # the seed, not the batch, decides the draws


def test_a_cancelled_row_leaves_its_batch_and_the_others_are_unchanged(
        pipe: Pipeline) -> None:
    requests = [pipe.chat_request(q) for q in ("Tell me a story.", "Count to ten.")]
    options = GenerationOptions(max_new_tokens=40)
    alone = [pipe.generate([r], options)[0] for r in requests]
    assert [len(r.tokens) for r in alone] == [40, 40]  # neither row stops by itself

    before = pipe.engine.stats.generated_tokens

    async def run() -> tuple[Done, BatchStats]:
        batcher = Batcher(pipe, max_batch_size=8, batch_wait_s=0.05)
        batcher.start()
        try:
            leaving = batcher.submit(requests[0], options, 60.0, stream=True)
            staying = batcher.submit(requests[1], options, 60.0)
            assert isinstance(await leaving.get(60.0), Token)
            leaving.cancel()  # the client went away after its first token
            return await staying.get(60.0), batcher.stats
        finally:
            batcher.close()

    done, stats = asyncio.run(run())
    assert done.result.tokens == alone[1].tokens
    assert (stats.batches, stats.cancelled_rows) == (1, 1)
    # the staying row's 40 tokens, and the leaving row's only until it was dropped
    assert pipe.engine.stats.generated_tokens - before < 40 + 40
    assert pipe.engine.running == 0  # both slots are free again


def test_a_short_job_leaves_while_a_long_one_runs_and_a_newcomer_joins(pipe: Pipeline) -> None:
    """Continuous batching: the newcomer starts before the long job ends (the old dynamic
    batches ran until their last row ended), and every job gets its tokens alone."""
    requests = [pipe.chat_request(q) for q in ("Tell me a story.", "Hi", "Count to ten.")]
    long, short = GenerationOptions(max_new_tokens=40), GenerationOptions(max_new_tokens=3)
    alone = [pipe.generate([requests[0]], long)[0], pipe.generate([requests[1]], short)[0],
             pipe.generate([requests[2]], short)[0]]

    async def run() -> tuple[list, list[str]]:
        batcher = Batcher(pipe, max_batch_size=8, batch_wait_s=0.05)
        batcher.start()
        order: list[str] = []  # which jobs ended, in the order their Done events came

        async def finish(name: str, ticket) -> Done:
            while not isinstance(event := await ticket.get(60.0), Done):
                pass
            order.append(name)
            return event

        try:
            first = asyncio.ensure_future(
                finish("first", batcher.submit(requests[0], long, 60.0, stream=True)))
            second = await finish("second", batcher.submit(requests[1], short, 60.0))
            third = await finish("third", batcher.submit(requests[2], short, 60.0))
            return [await first, second, third], order
        finally:
            batcher.close()

    done, order = asyncio.run(run())
    assert [d.result.tokens for d in done] == [r.tokens for r in alone]
    assert order == ["second", "third", "first"]  # dynamic batching: second, first, third


def test_served_model_name_of_a_run_export_is_the_run(tmp_path: Path) -> None:
    assert served_model_name(tmp_path / "runs" / "sft" / "export") == "sft"
    assert served_model_name(tmp_path / "tiny") == "tiny"


def test_prompt_budget_bound_is_below_the_exact_count(pipe: Pipeline) -> None:
    budget = PromptBudget(pipe)
    clip = np.zeros(16000 * 3, np.float32)
    texts = ("Hi", "héllo wörld " * 50, "        " * 40, "e\u0301" * 30, "日本語" * 20)
    for text in texts:
        request = pipe.chat_request([Message("user", (AudioPart(clip), TextPart(text)))])
        assert budget.lower_bound(request) <= budget.exact(request)
        assert budget.exact(request) == int(pipe.prepare([request]).lengths[0])
    long = pipe.chat_request("word " * 600)
    with pytest.raises(ApiError, match="maximum context length is 512 tokens") as info:
        budget.check(long, GenerationOptions(max_new_tokens=4), "messages")
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize("bind, hosts", [
    ("127.0.0.1", ("127.0.0.1", "localhost", "::1")),
    ("127.0.0.2", ("127.0.0.2", "127.0.0.1", "localhost", "::1")),
    ("10.1.2.3", ("10.1.2.3",)),
    ("0.0.0.0", None),  # every interface: names unknown, any admitted (--allowed-hosts)
    ("::", None),
])
def test_default_allowed_hosts_follow_the_bind_address(bind: str, hosts) -> None:
    assert default_allowed_hosts(bind) == hosts


@pytest.mark.parametrize("header, name", [
    ("LocalHost:8000", "localhost"), ("[::1]:8000", "::1"), ("[::1]", "::1"),
    ("127.0.0.1", "127.0.0.1"), ("evil.example:80", "evil.example")])
def test_host_name_drops_port_and_brackets(header: str, name: str) -> None:
    assert host_name(header) == name
