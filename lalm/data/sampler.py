"""Duration-aware batching: buckets by audio length and text length under a frame/token budget.

`BucketBatchSampler` yields lists of dataset indices (use it as a DataLoader ``batch_sampler``).
Each epoch:

1. every item falls in a bucket: a cell of a grid over (longest clip's frames + 2, tokens) whose
   cells grow geometrically by `bucket_ratio` in both directions, so the items of a bucket differ
   by less than that factor in both sizes;
2. the items are shuffled by a generator seeded with (seed, epoch) — every rank draws the same —
   then sorted by bucket and by tokens inside it (the shuffle breaks ties);
3. each bucket is cut greedily into batches whose padded size stays within the budget:
   ``items x longest tokens <= max_tokens`` and ``clips x (longest clip + 2) <= max_frames``
   (an item over budget on its own is a batch of one); no batch spans two buckets;
4. the batches are shuffled, and rank r of w takes batches r, r + w, r + 2w, ... (the list is
   first padded by repeating its head, or cut with ``drop_last``, to a multiple of w), as
   `torch.utils.data.DistributedSampler` shards items.

A smaller `bucket_ratio` means less padding and smaller batches: a batch's padding is below
``1 - 1 / bucket_ratio`` of it in both tensors, and on average about half of that — except that
the clips of one item are padded to its longest clip, which no batching can avoid.
Padding waste (`padding_waste`) is the share of the padded token and mel-frame cells that
hold padding. The position inside an epoch is resumable (`state_dict` / `load_state_dict`).

`HeldOutBatches` is the validation side: the same few batches at every validation, spread over
the held-out set's length-sorted batches rather than its shortest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler

from lalm.data.dataset import LOOKAHEAD
from lalm.errors import DataError


@dataclass(frozen=True)
class PaddingWaste:
    """Padding in an epoch's batches: 1 - real cells / padded cells, for tokens and mel frames.

    Attributes:
        tokens: waste in the [B, S] token tensors.
        frames: waste in the [C, M, T] feature tensors (per mel bin).
        batches: number of batches measured.
    """

    tokens: float
    frames: float
    batches: int


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length items under a padded-size budget (module docstring).

    Args:
        token_lens: tokens of each item (`AudioTextDataset.lengths[0]`).
        clip_frames: real mel frames of each item's clips (`AudioTextDataset.lengths[1]`).
        max_tokens: budget for batch size x longest item's tokens.
        max_frames: budget for clips x (longest clip's frames + 2).
        max_items: at most this many items per batch (None: no limit).
        seed: shuffling seed; the same (seed, epoch) gives the same batches on every rank.
        shuffle: False keeps the items' order before sorting and the batches' order.
        bucket_ratio: growth factor (> 1) of the bucket grid's cells.
        rank, world_size: this process's shard; default from torch.distributed (else 0 of 1).
        drop_last: drop the last batches that do not fill every rank, instead of repeating.
    """

    def __init__(self, token_lens: Sequence[int], clip_frames: Sequence[Sequence[int]],
                 max_tokens: int, max_frames: int, *, max_items: int | None = None,
                 seed: int = 0, shuffle: bool = True, bucket_ratio: float = 1.1,
                 rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False) -> None:
        if len(token_lens) != len(clip_frames):
            raise DataError(f"{len(token_lens)} token lengths but {len(clip_frames)} clip lists")
        if not token_lens:
            raise DataError("BucketBatchSampler needs at least one item")
        if max_tokens <= 0 or max_frames <= 0 or (max_items is not None and max_items <= 0):
            raise DataError(f"budgets must be positive: max_tokens={max_tokens}, "
                            f"max_frames={max_frames}, max_items={max_items}")
        if not bucket_ratio > 1:
            raise DataError(f"bucket_ratio must be > 1, got {bucket_ratio}")
        default_rank, default_world = _world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise DataError(f"rank {self.rank} is not in 0..{self.world_size - 1}")
        self.tokens = np.asarray(token_lens, dtype=np.int64)
        self.n_clips = np.array([len(c) for c in clip_frames], dtype=np.int64)
        self.longest_clip = np.array([max(c, default=0) for c in clip_frames], dtype=np.int64)
        self.clip_frames = [list(c) for c in clip_frames]
        self.max_tokens, self.max_frames, self.max_items = max_tokens, max_frames, max_items
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        log_ratio = np.log(bucket_ratio)
        self.bucket = np.stack([np.floor(np.log(self.longest_clip + LOOKAHEAD) / log_ratio),
                                np.floor(np.log(np.maximum(self.tokens, 1)) / log_ratio)], 1)
        self.epoch = 0
        self.position = 0  # batches of this rank already yielded in this epoch
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (new shuffle) from its first batch."""
        self.epoch, self.position = epoch, 0

    def _fits(self, batch: list[int], extra: int) -> bool:
        idx = batch + [extra]
        if self.max_items is not None and len(idx) > self.max_items:
            return False
        tokens = len(idx) * int(self.tokens[idx].max())
        clips = int(self.n_clips[idx].sum())
        frames = clips * (int(self.longest_clip[idx].max()) + LOOKAHEAD) if clips else 0
        return tokens <= self.max_tokens and frames <= self.max_frames

    def epoch_batches(self) -> list[list[int]]:
        """All ranks' batches of the current epoch, in order (before sharding)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.tokens)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        # lexsort: last key first; stable, so the shuffle breaks ties
        order = order[np.lexsort((self.tokens[order], self.bucket[order, 1],
                                  self.bucket[order, 0]))]
        batches: list[list[int]] = []
        batch: list[int] = []
        for i in map(int, order):
            if batch and (not (self.bucket[i] == self.bucket[batch[-1]]).all()
                          or not self._fits(batch, i)):
                batches.append(batch)
                batch = []
            batch.append(i)
        batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (self.epoch, batches)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self.epoch_batches()
        w = self.world_size
        if self.drop_last:
            batches = batches[: len(batches) // w * w]
        elif len(batches) % w:
            short = w - len(batches) % w
            batches = batches + [batches[i % len(batches)] for i in range(short)]
        return batches[self.rank::w]

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch (from the start)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's batches from `position` on; the position advances as they are taken."""
        batches = self._rank_batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where this rank is: seed, epoch and batches yielded in the epoch.

        With DataLoader workers prefetching, batches are yielded before they are used: store
        the trainer's count of consumed batches as ``position`` instead.
        """
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration continues the stored epoch at the stored position.

        Raises:
            DataError: the state was saved with another seed.
        """
        if state["seed"] != self.seed:
            raise DataError(f"sampler state has seed {state['seed']}, this sampler {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def padding_waste(self) -> PaddingWaste:
        """Padding share of the current epoch's batches (all ranks, before repetition)."""
        real_tok = padded_tok = real_fr = padded_fr = 0
        batches = self.epoch_batches()
        for batch in batches:
            real_tok += int(self.tokens[batch].sum())
            padded_tok += len(batch) * int(self.tokens[batch].max())
            clips = [f + LOOKAHEAD for i in batch for f in self.clip_frames[i]]
            real_fr += sum(clips)
            padded_fr += len(clips) * max(clips, default=0)
        return PaddingWaste(1 - real_tok / padded_tok,
                            1 - real_fr / padded_fr if padded_fr else 0.0, len(batches))


class HeldOutBatches(Sampler[list[int]]):
    """The same `n` batches of a held-out set at every pass (a DataLoader ``batch_sampler``).

    They are picked evenly along the unshuffled sampler's batches, which run from the shortest
    items to the longest, so a partial validation sees every length (the first `n` batches would
    be the shortest items only); with `n` or fewer batches, all of them. Unlike
    `BucketBatchSampler` it keeps no position, so each validation sees the same items and their
    losses are comparable across steps.
    """

    def __init__(self, sampler: BucketBatchSampler, n: int) -> None:
        """Args:
            sampler: an unshuffled sampler over the held-out set (this rank's shard).
            n: batches to keep (>= 1).

        Raises:
            DataError: `sampler` shuffles, or `n` < 1.
        """
        if sampler.shuffle:
            raise DataError("HeldOutBatches needs an unshuffled sampler (shuffle=False)")
        if n < 1:
            raise DataError(f"HeldOutBatches needs n >= 1, got {n}")
        batches = sampler._rank_batches()
        if n < len(batches):
            picks = np.linspace(0, len(batches) - 1, n).round().astype(int)
            batches = [batches[i] for i in picks]
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)
