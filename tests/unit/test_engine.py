"""The decode engine on a tiny random model: sequences joining and leaving at random steps get
the tokens they get alone (greedy, seeded sampling, repetition penalty, stop ids and stop
sequences, cancellations), the KV cache is allocated once and reused, streamed text holds back
stop sequences, and prefix reuse prefills only new tokens with unchanged outputs."""

from __future__ import annotations

import random

import pytest
import torch

from lalm.errors import GenerationError
from lalm.generation import Engine, GenerationOptions
from lalm.generation.engine import TextStream
from lalm.model import AudioLanguageModel, KVCache


@pytest.fixture(scope="module")
def model(peaked_model) -> AudioLanguageModel:
    return peaked_model


def decode(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(seed))


def _prompt(model: AudioLanguageModel, n: int, seed: int, audio: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds [n, D], ids [n]); with ``audio``, that many positions hold random rows (as
    spliced audio does)."""
    ids = _ids(n, seed)
    audio = min(audio, max(n - 2, 0))
    with torch.no_grad():
        embeds = model.decoder.embed(ids).clone()
        if audio:
            rows = torch.randn(audio, embeds.shape[1], generator=torch.Generator().manual_seed(
                seed + 1000)) * 0.5
            embeds[1:1 + audio] = rows
    return embeds, ids


def _options(rng: random.Random, seed: int) -> GenerationOptions:
    kind = rng.choice(["greedy", "sampled", "penalty", "min", "stopseq"])
    max_new = rng.randint(2, 14)
    if kind == "greedy":
        return GenerationOptions(max_new_tokens=max_new)
    if kind == "sampled":
        return GenerationOptions(max_new_tokens=max_new, temperature=1.2, top_k=40, seed=seed)
    if kind == "penalty":
        return GenerationOptions(max_new_tokens=max_new, temperature=0.9, top_p=0.9,
                                 repetition_penalty=1.3, seed=seed)
    if kind == "min":
        return GenerationOptions(max_new_tokens=max_new, min_new_tokens=min(2, max_new))
    return GenerationOptions(max_new_tokens=max_new, stop_sequences=("<7", "<1"))


def _alone(model, embeds, ids, options, stop_ids):
    engine = Engine(model, decode, slots=1)
    gen = engine.submit(embeds, ids, options, stop_ids)
    engine.run([gen])
    return gen.result


@pytest.mark.slow
@pytest.mark.parametrize("schedule_seed", [0, 1, 2])
def test_random_arrivals_and_cancellations_give_every_sequence_its_solo_tokens(
        model, schedule_seed: int) -> None:
    rng = random.Random(schedule_seed)
    n = 12
    prompts = [_prompt(model, rng.randint(1, 40), 100 * schedule_seed + i,
                       audio=rng.choice([0, 0, 5])) for i in range(n)]
    options = [_options(rng, seed=schedule_seed * 50 + i) for i in range(n)]
    stop_ids = [tuple(rng.sample(range(400), 3)) for _ in range(n)]
    cancel_at = {rng.randrange(n): rng.randint(1, 4) for _ in range(2)}  # seq -> its tokens
    engine = Engine(model, decode, slots=4, max_prefill_tokens=rng.choice([16, 64, 4096]))
    gens: list = [None] * n
    submitted = 0
    for _ in range(400):  # a bounded loop: the schedule ends well before
        while submitted < n and rng.random() < 0.4:  # arrivals at random steps
            embeds, ids = prompts[submitted]
            gens[submitted] = engine.submit(embeds, ids, options[submitted],
                                            stop_ids[submitted])
            submitted += 1
        for i, limit in cancel_at.items():
            if gens[i] is not None and len(gens[i].result.tokens) >= limit:
                engine.cancel(gens[i])
        engine.step()
        if submitted == n and all(g.done for g in gens):
            break
    assert submitted == n and all(g.done for g in gens)
    assert engine.running == 0 and engine.waiting == 0
    for i, gen in enumerate(gens):
        alone = _alone(model, *prompts[i], options[i], stop_ids[i])
        if gen.cancelled:
            assert gen.result.finish_reason is None
            assert gen.result.tokens == alone.tokens[:len(gen.result.tokens)]
            continue
        assert gen.result.tokens == alone.tokens, i
        assert gen.result.finish_reason == alone.finish_reason
        assert gen.result.logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_the_cache_is_allocated_once_and_reused(model) -> None:
    engine = Engine(model, slots=3)
    options = GenerationOptions(max_new_tokens=5)
    first = [engine.submit(*_prompt(model, 9, s), options, ()) for s in range(3)]
    engine.run(first)
    cache = engine.cache
    assert isinstance(cache, KVCache) and cache.batch_size == 3
    for round_ in range(3):
        gens = [engine.submit(*_prompt(model, 5 + round_, 10 + s), options, ()) for s in range(5)]
        engine.run(gens)
        assert engine.cache is cache  # no fresh cache per call
    assert model.decoder.cache is None  # set only around the engine's own forwards


def test_streamed_text_holds_back_stop_sequences() -> None:
    tokens = [5, 12, 7, 3, 9]
    stream = TextStream(decode, ["<3><9>", "<7><4>"])
    pieces = [stream.push(t, None) for t in tokens[:-1]]
    pieces.append(stream.push(tokens[-1], "stop_sequence"))
    assert "".join(pieces) == "<5><12><7>"  # cut before the stop sequence
    # the last 5 characters (a stop sequence's length less one) are always held back, so
    # "<3>" was never released before "<9>" showed it starts "<3><9>"
    assert pieces == ["", "<5", "><1", "2><", "7>"]


def test_engine_events_stream_the_result_text(model) -> None:
    embeds, ids = _prompt(model, 6, 7)
    free = _alone(model, embeds, ids, GenerationOptions(max_new_tokens=10), ())
    stop = decode(free.tokens[4:6])
    options = GenerationOptions(max_new_tokens=10, stop_sequences=(stop,))
    engine = Engine(model, decode, slots=2)
    gen = engine.submit(embeds, ids, options, ())
    pieces = []
    while not gen.done:
        engine.step()
        pieces += [e.text for e in gen.take_events()]
    assert gen.result.finish_reason == "stop_sequence"
    assert "".join(pieces) == decode(free.tokens[:4])


def test_prefix_reuse_prefills_only_new_tokens_and_changes_nothing(model) -> None:
    options = GenerationOptions(max_new_tokens=6)
    embeds, ids = _prompt(model, 20, 30)
    keys = ids.tolist()
    plain = Engine(model, slots=2)
    reusing = Engine(model, slots=2, prefix_slots=2)
    first = reusing.submit(embeds, ids, options, (), keys=keys)
    reusing.run([first])
    # the next turn: the whole first turn (prompt + answer) and a new question
    answer = torch.tensor(first.result.tokens)
    turn = torch.cat([ids, answer, _ids(7, 31)])
    with torch.no_grad():
        turn_embeds = torch.cat([embeds, model.decoder.embed(turn[20:])])
    before = reusing.stats.prefill_tokens
    second = reusing.submit(turn_embeds, turn, options, (), keys=turn.tolist())
    reusing.run([second])
    # the answer's last token was never fed, so it and the question are prefilled
    assert reusing.stats.prefill_tokens - before == 1 + 7
    assert reusing.stats.reused_tokens == 20 + len(answer) - 1
    alone = plain.submit(turn_embeds, turn, options, ())
    plain.run([alone])
    assert second.result.tokens == alone.result.tokens
    # a running sequence shares its prefix too (a repeated system prompt)
    sharing = [reusing.submit(turn_embeds[:k], turn[:k], options, (), keys=turn[:k].tolist())
               for k in (30, 33)]
    reusing.run(sharing)
    for k, gen in zip((30, 33), sharing):
        ref = plain.submit(turn_embeds[:k], turn[:k], options, ())
        plain.run([ref])
        assert gen.result.tokens == ref.result.tokens
    assert reusing.stats.prefix_hits >= 3


def test_submit_refuses_what_cannot_run(model) -> None:
    engine = Engine(model)
    embeds, ids = _prompt(model, 10, 1)
    with pytest.raises(GenerationError, match="max_seq_len"):
        engine.submit(embeds, ids, GenerationOptions(max_new_tokens=600), ())
    with pytest.raises(GenerationError, match="decode"):
        engine.submit(embeds, ids, GenerationOptions(stop_sequences=("x",)), ())
    with pytest.raises(GenerationError, match="top_logprobs"):
        Engine(model, decode).submit(embeds, ids, GenerationOptions(), (), top_logprobs=21)


def test_top_logprobs_are_the_raw_log_softmax(model) -> None:
    embeds, ids = _prompt(model, 8, 2)
    engine = Engine(model, decode)
    gen = engine.submit(embeds, ids, GenerationOptions(max_new_tokens=3), (), top_logprobs=3)
    engine.run([gen])
    with torch.no_grad():
        logits = model.decoder(embeds[None], torch.arange(8)[None], output="last_logits")[0]
    expected = logits.log_softmax(-1).topk(3)
    first = gen.result.token_logprobs[0]
    assert first.token == gen.result.tokens[0] == int(expected.indices[0])
    assert [t for t, _ in first.top] == expected.indices.tolist()
    assert [lp for _, lp in first.top] == pytest.approx(expected.values.tolist(), abs=1e-5)
    assert sum(r.logprob for r in gen.result.token_logprobs) == pytest.approx(
        gen.result.logprob)


def test_kv_cache_rows_at_different_lengths_copy_and_grow() -> None:
    cache = KVCache(n_layer=1, batch_size=3, n_kv_head=1, max_seq_len=4, head_dim=2,
                    dtype=torch.float32)
    cache.use_rows(0, 2)
    cache.lengths[:2] = [1, 3]
    assert cache.query_columns(1).tolist() == [[1], [3]]
    mask = cache.append_mask(torch.ones(2, 1, dtype=torch.bool))
    keys, _ = cache.update(0, torch.full((2, 1, 1, 2), 5.0), torch.zeros(2, 1, 1, 2))
    cache.advance(1)
    assert mask.shape == (2, 4) and mask[0].tolist() == [False, True, False, False]
    assert keys[0, 0, 1].tolist() == [5.0, 5.0] and keys[1, 0, 3].tolist() == [5.0, 5.0]
    assert cache.lengths == [2, 4, 0]
    cache.copy_row(1, 2)
    assert cache.lengths[2] == 4 and torch.equal(cache.k[0, 2], cache.k[0, 1])
    cache.grow(4, 8)
    assert cache.k.shape == (1, 4, 1, 8, 2) and cache.lengths == [2, 4, 4, 0]
    assert cache.k[0, 1, 0, 3].tolist() == [5.0, 5.0]
    cache.reset_rows(1, 2)
    assert cache.lengths == [2, 0, 4, 0] and not cache.key_mask[1].any()
