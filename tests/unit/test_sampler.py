"""BucketBatchSampler: coverage, budgets, buckets, determinism, sharding, resume, waste."""

from __future__ import annotations

import numpy as np
import pytest

from lalm.data.sampler import BucketBatchSampler, HeldOutBatches
from lalm.errors import DataError


def _sizes(n: int = 600, seed: int = 0, max_clips: int = 2) -> tuple[list[int], list[list[int]]]:
    """Tokens and per-clip mel frames of n items: 0..max_clips clips of 0.5-12 s, 20-300 text
    tokens plus the audio tokens."""
    rng = np.random.default_rng(seed)
    frames = [[int(f) for f in rng.integers(50, 1200, size=rng.integers(0, max_clips + 1))]
              for _ in range(n)]
    tokens = [int(rng.integers(20, 300)) + sum(f // 4 for f in fr) for fr in frames]
    return tokens, frames


def _padded(sampler: BucketBatchSampler, batch: list[int]) -> tuple[int, int]:
    clips = [f for i in batch for f in sampler.clip_frames[i]]
    tokens = len(batch) * max(int(sampler.tokens[i]) for i in batch)
    return tokens, len(clips) * (max(clips) + 2) if clips else 0


def test_epoch_covers_every_item_once_within_budget_and_buckets():
    tokens, frames = _sizes()
    sampler = BucketBatchSampler(tokens, frames, max_tokens=3000, max_frames=12000, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(tokens)))
    for batch in batches:
        padded_tokens, padded_frames = _padded(sampler, batch)
        assert len(batch) == 1 or (padded_tokens <= 3000 and padded_frames <= 12000)
        # one bucket per batch: sizes within the bucket ratio of each other
        toks = [tokens[i] for i in batch]
        longest = [max(frames[i], default=0) + 2 for i in batch]
        assert max(toks) / min(toks) < 1.1 and max(longest) / min(longest) < 1.1
    waste = sampler.padding_waste()
    real = sum(tokens)
    padded = sum(_padded(sampler, b)[0] for b in batches)
    assert waste.tokens == pytest.approx(1 - real / padded)
    assert waste.batches == len(batches) == len(sampler)


def test_padding_waste_under_five_percent_with_single_clips():
    # (clips of one item are padded to its longest: batching cannot remove that part)
    tokens, frames = _sizes(max_clips=1)
    waste = BucketBatchSampler(tokens, frames, 3000, 12000).padding_waste()
    assert 0 < waste.tokens < 0.05 and 0 < waste.frames < 0.05


def test_smaller_buckets_waste_less():
    tokens, frames = _sizes()
    coarse = BucketBatchSampler(tokens, frames, 3000, 12000, bucket_ratio=1.5).padding_waste()
    fine = BucketBatchSampler(tokens, frames, 3000, 12000, bucket_ratio=1.05).padding_waste()
    assert fine.tokens < coarse.tokens and fine.frames < coarse.frames
    assert fine.batches > coarse.batches


def test_deterministic_by_seed_and_epoch():
    tokens, frames = _sizes()

    def epoch(seed: int, number: int) -> list[list[int]]:
        sampler = BucketBatchSampler(tokens, frames, 3000, 12000, seed=seed)
        sampler.set_epoch(number)
        return list(sampler)

    assert epoch(0, 0) == epoch(0, 0)
    assert epoch(0, 0) != epoch(0, 1)
    assert epoch(0, 0) != epoch(1, 0)
    ordered = BucketBatchSampler(tokens, frames, 3000, 12000, shuffle=False)
    assert list(ordered) == ordered.epoch_batches()


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_shard_the_same_batches(drop_last):
    tokens, frames = _sizes(300)
    world = 3
    shards = [list(BucketBatchSampler(tokens, frames, 3000, 12000, seed=5, rank=r,
                                      world_size=world, drop_last=drop_last))
              for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank steps the same number of times
    everything = BucketBatchSampler(tokens, frames, 3000, 12000, seed=5).epoch_batches()
    interleaved = [b for step in zip(*shards) for b in step]
    n = len(everything)
    if drop_last:
        assert interleaved == everything[: n // world * world]
    else:
        assert interleaved[:n] == everything
        assert interleaved[n:] == everything[: len(interleaved) - n]
    with pytest.raises(DataError, match="rank 3"):
        BucketBatchSampler(tokens, frames, 3000, 12000, rank=3, world_size=3)


def test_resume_continues_exactly():
    tokens, frames = _sizes()
    first = BucketBatchSampler(tokens, frames, 3000, 12000, seed=2)
    first.set_epoch(4)
    full = list(first)
    first.set_epoch(4)
    it = iter(first)
    taken = [next(it) for _ in range(7)]
    state = first.state_dict()
    assert state == {"seed": 2, "epoch": 4, "position": 7}
    resumed = BucketBatchSampler(tokens, frames, 3000, 12000, seed=2)
    resumed.load_state_dict(state)
    assert taken + list(resumed) == full
    with pytest.raises(DataError, match="seed 2"):
        BucketBatchSampler(tokens, frames, 3000, 12000, seed=9).load_state_dict(state)


def test_bad_arguments():
    tokens, frames = _sizes(10)
    with pytest.raises(DataError, match="10 token lengths but 9"):
        BucketBatchSampler(tokens, frames[:9], 3000, 12000)
    with pytest.raises(DataError, match="budgets must be positive"):
        BucketBatchSampler(tokens, frames, 0, 12000)
    with pytest.raises(DataError, match="bucket_ratio"):
        BucketBatchSampler(tokens, frames, 3000, 12000, bucket_ratio=1.0)
    with pytest.raises(DataError, match="at least one item"):
        BucketBatchSampler([], [], 3000, 12000)


def test_held_out_batches_are_fixed_and_spread_over_lengths():
    tokens, frames = _sizes(200)
    sampler = BucketBatchSampler(tokens, frames, max_tokens=3000, max_frames=12000,
                                 shuffle=False)
    everything = list(sampler)  # shortest items first, longest last
    held = HeldOutBatches(sampler, 5)
    assert len(held) == 5 and list(held) == list(held)  # no position: the same every pass
    assert list(held)[0] == everything[0] and list(held)[-1] == everything[-1]
    assert all(b in everything for b in held)
    assert list(HeldOutBatches(sampler, len(everything) + 3)) == everything
    with pytest.raises(DataError, match="unshuffled"):
        HeldOutBatches(BucketBatchSampler(tokens, frames, 3000, 12000), 2)
    with pytest.raises(DataError, match="n >= 1"):
        HeldOutBatches(sampler, 0)
