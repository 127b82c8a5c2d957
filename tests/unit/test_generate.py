"""The decode loop on a tiny random model: KV cache = recompute, batched = single (left padding,
audio of different lengths), stop tokens and sequences, min/max tokens, sampling, beam search
(against exhaustive search), cache reordering, typed errors. The engine's own tests (joins and
leaves, streaming, cancellation, prefix reuse) are in test_engine.py."""

from __future__ import annotations

import itertools

import pytest
import torch

from lalm.config import ModelConfig
from lalm.errors import GenerationError
from lalm.generation import (
    GenerationOptions,
    PromptBatch,
    Engine,
    beam_search,
    generate,
    left_pad,
)
from lalm.model import AudioLanguageModel, KVCache, positions_from_mask
from lalm.testing.models import random_features, random_model

AUDIO = 500  # a slot id of the tiny vocabulary (512)


@pytest.fixture(scope="module")
def model(peaked_model) -> AudioLanguageModel:
    return peaked_model


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _text_batch(model: AudioLanguageModel, rows: list[list[int]]) -> PromptBatch:
    ids, mask = left_pad(rows, pad_id=0)
    return PromptBatch(ids, mask, model.decoder.embed(ids).detach())


def _audio_batch(model: AudioLanguageModel, rows: list[list[int]],
                 clip_lens: list[int]) -> PromptBatch:
    """Rows hold AUDIO runs; `clip_lens` are the mel lengths of the clips in row-major order."""
    clips = [random_features([n], n_mels=128, seed=n)[0][0] for n in clip_lens]  # [128, L + 2]
    features = torch.nn.utils.rnn.pad_sequence([c.T for c in clips], batch_first=True)
    features, lens = features.transpose(1, 2), torch.tensor(clip_lens)
    ids, mask = left_pad(rows, pad_id=0)
    with torch.no_grad():
        audio = model.embed_audio(features, lens)
        embeds = model.embed_prompt(ids, audio, (ids == AUDIO) & mask)
    return PromptBatch(ids, mask, embeds)


def _recompute_greedy(model: AudioLanguageModel, row: list[int], n: int) -> list[int]:
    """Greedy tokens with a full forward per step, no cache."""
    ids = list(row)
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids])
            logits = model.decoder(model.decoder.embed(x), positions_from_mask(x >= 0),
                                   output="last_logits")
            ids.append(int(logits.argmax(-1)))
    return ids[len(row):]


def test_kv_cache_decoding_equals_recompute(model) -> None:
    row = _ids(9, 0)
    options = GenerationOptions(max_new_tokens=12)
    result = generate(model, _text_batch(model, [row]), options, stop_ids=())[0]
    assert result.tokens == _recompute_greedy(model, row, 12)
    assert result.finish_reason == "length" and result.logprob < 0
    assert model.decoder.cache is None  # cleared after the run


def test_batched_equals_single_with_left_padding_and_audio(model) -> None:
    rows = [[*_ids(3, 1), *[AUDIO] * 5, *_ids(2, 2)],
            [*_ids(11, 3)],
            [*_ids(1, 4), *[AUDIO] * 2, *_ids(4, 5), *[AUDIO] * 9, 7]]
    clips = [[21], [], [7, 37]]  # mel lengths: N = ((L - 1) // 2 + 1) // 2 tokens each
    options = GenerationOptions(max_new_tokens=10)
    batched = generate(model, _audio_batch(model, rows, list(itertools.chain(*clips))), options, stop_ids=())
    for row, clip, result in zip(rows, clips, batched):
        batch = (_audio_batch(model, [row], clip) if clip else _text_batch(model, [row]))
        alone = generate(model, batch, options, stop_ids=())[0]
        assert result.tokens == alone.tokens
        assert result.logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_stop_tokens_end_rows_independently(model) -> None:
    rows = [_ids(5, 6), _ids(8, 7)]
    free = generate(model, _text_batch(model, rows), GenerationOptions(max_new_tokens=8), ())
    stop = free[0].tokens[2]
    stopped = generate(model, _text_batch(model, rows), GenerationOptions(max_new_tokens=8),
                       stop_ids=[stop])
    first = free[0].tokens.index(stop)
    assert stopped[0].tokens == free[0].tokens[: first + 1]
    assert stopped[0].finish_reason == "stop"
    other = free[1].tokens
    expected = other[: other.index(stop) + 1] if stop in other else other
    assert stopped[1].tokens == expected


def test_min_new_tokens_bans_stops_and_suppress_bans_always(model) -> None:
    row = [_ids(5, 6)]
    free = generate(model, _text_batch(model, row), GenerationOptions(max_new_tokens=6), ())[0]
    stop = free.tokens[0]
    late = generate(model, _text_batch(model, row),
                    GenerationOptions(max_new_tokens=6, min_new_tokens=3), [stop])[0]
    assert stop not in late.tokens[:3]
    banned = generate(model, _text_batch(model, row),
                      GenerationOptions(max_new_tokens=6, suppress_token_ids=tuple(free.tokens)),
                      ())[0]
    assert not set(banned.tokens) & set(free.tokens)


def test_stop_sequences_need_decode_and_end_the_row(model) -> None:
    row = [_ids(4, 8)]
    free = generate(model, _text_batch(model, row), GenerationOptions(max_new_tokens=6), ())[0]

    def decode(ids: list[int]) -> str:
        return "".join(f"<{i}>" for i in ids)

    options = GenerationOptions(max_new_tokens=6, stop_sequences=(f"<{free.tokens[2]}>",))
    with pytest.raises(GenerationError, match="decode"):
        generate(model, _text_batch(model, row), options, ())
    cut = generate(model, _text_batch(model, row), options, (), decode)[0]
    assert cut.finish_reason == "stop_sequence"
    assert cut.tokens == free.tokens[: free.tokens.index(free.tokens[2]) + 1]


def test_sampling_is_reproducible_and_top_k_1_is_greedy(model) -> None:
    batch = _text_batch(model, [_ids(6, 9), _ids(3, 10)])
    greedy = generate(model, batch, GenerationOptions(max_new_tokens=8), ())
    top1 = generate(model, batch, GenerationOptions(max_new_tokens=8, temperature=1.5, top_k=1,
                                                    seed=0), ())
    assert [r.tokens for r in top1] == [r.tokens for r in greedy]
    hot = GenerationOptions(max_new_tokens=8, temperature=5.0, seed=7)
    first, again = generate(model, batch, hot, ()), generate(model, batch, hot, ())
    assert [r.tokens for r in first] == [r.tokens for r in again]
    assert [r.tokens for r in first] != [r.tokens for r in greedy]


def test_repetition_penalty_changes_choices_of_seen_tokens(model) -> None:
    row = _ids(6, 11)
    free = generate(model, _text_batch(model, [row]), GenerationOptions(max_new_tokens=12), ())
    harsh = generate(model, _text_batch(model, [row]),
                     GenerationOptions(max_new_tokens=12, repetition_penalty=1e6), ())
    seen = set(row)
    for token in harsh[0].tokens:
        assert token not in seen
        seen.add(token)
    assert harsh[0].tokens != free[0].tokens or not (set(free[0].tokens) & set(row))


def _exhaustive_best(model: AudioLanguageModel, row: list[int]) -> tuple[list[int], float]:
    """Best 2-token continuation by total log-probability, over the whole vocabulary."""
    vocab = model.config.decoder.vocab_size
    with torch.no_grad():
        x = torch.tensor([row])
        first = model.decoder(model.decoder.embed(x), positions_from_mask(x >= 0))[0, -1]
        first = first.log_softmax(-1)
        pairs = torch.cat([x.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
        second = model.decoder(model.decoder.embed(pairs), positions_from_mask(pairs >= 0),
                               output="last_logits").log_softmax(-1)
        total = first[:, None] + second  # [V, V]
    best = int(total.argmax())
    return list(divmod(best, vocab)), float(total.max())


def test_beam_search_finds_the_exhaustive_optimum() -> None:
    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 48})
    small = random_model(config, seed=5)
    row = [3, 17, 9, 22]
    tokens, logprob = _exhaustive_best(small, row)
    options = GenerationOptions(max_new_tokens=2, num_beams=48, length_penalty=0.0)
    result = beam_search(small, _text_batch(small, [row]), options, stop_ids=())[0]
    assert result.tokens == tokens
    assert result.logprob == pytest.approx(logprob, abs=1e-4)


def test_beam_search_batched_equals_single_and_beats_greedy(model) -> None:
    rows = [_ids(7, 14), _ids(3, 15)]
    options = GenerationOptions(max_new_tokens=6, num_beams=3, length_penalty=0.0)
    batched = generate(model, _text_batch(model, rows), options, ())
    greedy = generate(model, _text_batch(model, rows), GenerationOptions(max_new_tokens=6), ())
    for row, beam, first in zip(rows, batched, greedy):
        alone = beam_search(model, _text_batch(model, [row]), options, ())[0]
        assert beam.tokens == alone.tokens
        assert beam.logprob >= first.logprob - 1e-5


def test_beam_search_stops_on_stop_tokens(model) -> None:
    row = [_ids(5, 16)]
    options = GenerationOptions(max_new_tokens=8, num_beams=2)
    free = beam_search(model, _text_batch(model, row), options, ())[0]
    stopped = beam_search(model, _text_batch(model, row), options, [free.tokens[1]])[0]
    assert stopped.finish_reason == "stop" or free.tokens[1] not in stopped.tokens
    assert len(stopped.tokens) <= 8


def test_kv_cache_reorder_copies_rows_and_resizes() -> None:
    cache = KVCache(n_layer=1, batch_size=2, n_kv_head=1, max_seq_len=4, head_dim=2,
                    dtype=torch.float32)
    cache.k[0, 0, 0, :2] = 1.0
    cache.k[0, 1, 0, :2] = 2.0
    cache.key_mask[1, :2] = True
    cache.length = 2
    cache.reorder(torch.tensor([1, 1]))
    assert cache.k[0, :, 0, :2].unique().tolist() == [2.0]
    assert cache.key_mask[:, :2].all()
    cache.reorder(torch.tensor([0, 0, 1]))
    assert cache.batch_size == 3 and cache.k.shape[1] == 3 and cache.key_mask.shape == (3, 4)


def test_errors_are_typed(model) -> None:
    batch = _text_batch(model, [_ids(10, 17)])
    too_long = GenerationOptions(max_new_tokens=model.config.decoder.max_seq_len)
    with pytest.raises(GenerationError, match="max_seq_len"):
        generate(model, batch, too_long, ())
    with pytest.raises(GenerationError, match="beam"):
        Engine(model).submit(batch.embeds[0], batch.ids[0], GenerationOptions(num_beams=2), ())
    with pytest.raises(GenerationError, match="at least one token"):
        left_pad([[1, 2], []], 0)


def test_left_pad_layout() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[True] * 3, [False, False, True]]
    assert list(itertools.chain(*positions_from_mask(mask).tolist())) == [0, 1, 2, 0, 0, 0]
