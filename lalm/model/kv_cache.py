"""Static key/value cache for the decoder: preallocated buffers indexed by cache column.

Each row keeps its own fill length, and RoPE positions are per row (`input_pos`), so a
left-padded batch keeps its pads in the first columns, masks them as keys, and gives every real
token the position it has alone. Rows of different lengths share one cache as well (a
continuous-batching engine's slots): a forward runs on a window of consecutive rows
(`use_rows`), each row writing its new tokens after its own last column; columns a row has not
written are never attended to (its key mask is False there).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    """Keys and values of every decoder layer plus the bookkeeping a left-padded batch needs.

    Buffers (non-persistent, so they never reach a state dict):
        k, v: [n_layer, B, H_kv, max_seq_len, head_dim] in the model dtype.
        key_mask: [B, max_seq_len] bool, True where the column holds a real token.

    Attributes:
        lengths: per row, the columns filled so far (its next forward writes from there).
        rows: (start, stop), the rows the next forward runs on (default: all of them).
        rope_base: [rows] float32 RoPE base of the window's rows, fixed by their prefill
            (dynamic NTK), or None while one of them has none yet.
    """

    k: Tensor
    v: Tensor
    key_mask: Tensor

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_seq_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = (n_layer, batch_size, n_kv_head, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer(
            "key_mask",
            torch.zeros(batch_size, max_seq_len, dtype=torch.bool, device=device),
            persistent=False,
        )
        self.lengths = [0] * batch_size
        self.rows = (0, batch_size)
        self._rope = torch.zeros(batch_size, dtype=torch.float32, device=device)
        self._rope_set = [False] * batch_size

    @property
    def batch_size(self) -> int:
        """Rows the cache was set up for."""
        return self.k.shape[1]

    @property
    def max_seq_len(self) -> int:
        """Columns the cache holds."""
        return self.k.shape[3]

    @property
    def length(self) -> int:
        """Columns filled by the longest row of the window."""
        start, stop = self.rows
        return max(self.lengths[start:stop], default=0)

    @length.setter
    def length(self, value: int) -> None:
        start, stop = self.rows
        self.lengths[start:stop] = [value] * (stop - start)

    @property
    def rope_base(self) -> Tensor | None:
        start, stop = self.rows
        return self._rope[start:stop] if all(self._rope_set[start:stop]) else None

    @rope_base.setter
    def rope_base(self, base: Tensor | None) -> None:
        start, stop = self.rows
        if base is not None:
            self._rope[start:stop] = base.to(self._rope.device)
        self._rope_set[start:stop] = [base is not None] * (stop - start)

    def row_rope_base(self, row: int) -> Tensor | None:
        """[1] float32 RoPE base of one row, or None before its prefill."""
        return self._rope[row:row + 1] if self._rope_set[row] else None

    def use_rows(self, start: int, stop: int) -> None:
        """Run the next forwards on rows ``start .. stop - 1`` only (their keys are views)."""
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"rows {start}..{stop} outside a cache of {self.batch_size}")
        self.rows = (start, stop)

    def reset(self) -> None:
        """Forget everything (the buffers are reused, not reallocated)."""
        self.reset_rows(0, self.batch_size)
        self.rows = (0, self.batch_size)

    def reset_rows(self, start: int, stop: int) -> None:
        """Empty rows ``start .. stop - 1`` (a freed slot): no columns, no RoPE base."""
        self.lengths[start:stop] = [0] * (stop - start)
        self._rope_set[start:stop] = [False] * (stop - start)
        self.key_mask[start:stop] = False

    def copy_row(self, src: int, dst: int, columns: int | None = None) -> None:
        """Make row ``dst`` hold row ``src``'s first ``columns`` columns (default: all it
        filled), with their key mask and RoPE base: a slot moved, or a shared prefix reused."""
        n = self.lengths[src] if columns is None else columns
        if src != dst:
            self.k[:, dst, :, :n] = self.k[:, src, :, :n]
            self.v[:, dst, :, :n] = self.v[:, src, :, :n]
            self.key_mask[dst] = False
            self.key_mask[dst, :n] = self.key_mask[src, :n]
            self._rope[dst] = self._rope[src]
            self._rope_set[dst] = self._rope_set[src]
        elif n < self.lengths[src]:
            self.key_mask[dst, n:] = False
        self.lengths[dst] = n

    def grow(self, batch_size: int, max_seq_len: int) -> None:
        """Reallocate to at least ``batch_size`` rows and ``max_seq_len`` columns, keeping
        every row's content (an engine's cache grows to its high-water mark, rarely)."""
        rows, cols = max(batch_size, self.batch_size), max(max_seq_len, self.max_seq_len)
        if (rows, cols) == (self.batch_size, self.max_seq_len):
            return
        old_rows, old_cols = self.batch_size, self.max_seq_len
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[0], rows, old.shape[2], cols, old.shape[4])
            new[:, :old_rows, :, :old_cols] = old
            setattr(self, name, new)
        mask = self.key_mask.new_zeros(rows, cols)
        mask[:old_rows, :old_cols] = self.key_mask
        self.key_mask = mask
        rope = self._rope.new_zeros(rows)
        rope[:old_rows] = self._rope
        self._rope = rope
        self.lengths += [0] * (rows - old_rows)
        self._rope_set += [False] * (rows - old_rows)
        self.rows = (0, rows)

    def query_columns(self, n_new: int) -> Tensor:
        """[B, S] int64: the column each of the next S tokens of each window row goes to."""
        start, stop = self.rows
        first = torch.tensor(self.lengths[start:stop], device=self.k.device)
        return first[:, None] + torch.arange(n_new, device=self.k.device)

    def append_mask(self, token_mask: Tensor) -> Tensor:
        """Record which of the next S columns of each window row hold real tokens.

        Args:
            token_mask: [B, S] bool for the tokens about to be written after each row's
                filled columns.

        Returns:
            [B, K] bool key mask of the window's rows over the columns up to the longest
            row's end after these tokens.

        Raises:
            ValueError: batch size differs from the window's, or a row would overflow.
        """
        batch, n_new = token_mask.shape
        start, stop = self.rows
        if batch != stop - start:
            raise ValueError(f"batch of {batch} rows for a KV cache set up for {stop - start}")
        end = self.length + n_new
        if end > self.max_seq_len:
            raise ValueError(
                f"KV cache overflow: {self.length} + {n_new} tokens > "
                f"max_seq_len {self.max_seq_len}"
            )
        lengths = self.lengths[start:stop]
        if len(set(lengths)) == 1:
            self.key_mask[start:stop, lengths[0] : lengths[0] + n_new] = token_mask
        else:
            rows = torch.arange(start, stop, device=self.k.device)[:, None]
            self.key_mask[rows, self.query_columns(n_new)] = token_mask
        return self.key_mask[start:stop, :end]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write one layer's new keys/values after each window row's filled columns and
        return all keys/values of the window.

        Args:
            layer: decoder layer index.
            k, v: [B, H_kv, S, head_dim] for the new tokens.

        Returns:
            (keys, values), each [B, H_kv, K, head_dim], views into the cache (K: the
            longest row's end).
        """
        start, stop = self.rows
        n_new = k.shape[2]
        lengths = self.lengths[start:stop]
        end = max(lengths) + n_new
        if len(set(lengths)) == 1:
            self.k[layer, start:stop, :, lengths[0] : lengths[0] + n_new] = k
            self.v[layer, start:stop, :, lengths[0] : lengths[0] + n_new] = v
        else:  # rows at different lengths: each writes at its own columns
            rows = torch.arange(start, stop, device=k.device)[:, None]
            cols = self.query_columns(n_new)
            self.k[layer][rows, :, cols] = k.transpose(1, 2)
            self.v[layer][rows, :, cols] = v.transpose(1, 2)
        return self.k[layer, start:stop, :, :end], self.v[layer, start:stop, :, :end]

    def reorder(self, rows: Tensor) -> None:
        """Rebuild the batch from existing rows (beam search): new row i is old row `rows[i]`.

        Rows may repeat or drop, and the batch size may change (one prompt row expanded to
        several beams). Only the filled columns are copied.

        Args:
            rows: [B'] int64 indices into the current batch.
        """
        rows = rows.to(self.k.device)
        end = max(self.lengths, default=0)
        if rows.shape[0] == self.batch_size:
            self.k[:, :, :, :end] = self.k[:, rows, :, :end]
            self.v[:, :, :, :end] = self.v[:, rows, :, :end]
            self.key_mask[:, :end] = self.key_mask[rows, :end]
        else:
            self.k = self.k.index_select(1, rows)
            self.v = self.v.index_select(1, rows)
            self.key_mask = self.key_mask.index_select(0, rows)
        order = rows.tolist()
        self._rope = self._rope.index_select(0, rows.to(self._rope.device))
        self.lengths = [self.lengths[i] for i in order]
        self._rope_set = [self._rope_set[i] for i in order]
        self.rows = (0, len(order))

    def advance(self, n_new: int) -> None:
        """Mark the S columns written by the current forward as filled, in every window row."""
        start, stop = self.rows
        self.lengths[start:stop] = [n + n_new for n in self.lengths[start:stop]]
