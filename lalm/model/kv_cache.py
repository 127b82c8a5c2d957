"""Static key/value cache for the decoder: preallocated buffers indexed by cache column.

Columns are shared by the whole batch (column c of every row was written by the same forward
call), while RoPE positions are per row (`input_pos`), so a left-padded batch keeps its pads in
the first columns, masks them as keys, and gives every real token the position it has alone.
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
        length: columns filled so far (the next forward writes from here).
        rope_base: [B] float32 RoPE base per row, fixed by the prefill (dynamic NTK), or None
            before the prefill.
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
        self.length = 0
        self.rope_base: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Rows the cache was set up for."""
        return self.k.shape[1]

    @property
    def max_seq_len(self) -> int:
        """Columns the cache holds."""
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget everything (the buffers are reused, not reallocated)."""
        self.length = 0
        self.rope_base = None
        self.key_mask.zero_()

    def append_mask(self, token_mask: Tensor) -> Tensor:
        """Record which of the next S columns hold real tokens.

        Args:
            token_mask: [B, S] bool for the tokens about to be written at columns
                `length .. length + S - 1`.

        Returns:
            [B, length + S] bool key mask over every column written so far plus these.

        Raises:
            ValueError: batch size differs from the cache's, or the cache would overflow.
        """
        batch, n_new = token_mask.shape
        if batch != self.batch_size:
            raise ValueError(f"batch of {batch} rows for a KV cache set up for {self.batch_size}")
        end = self.length + n_new
        if end > self.max_seq_len:
            raise ValueError(
                f"KV cache overflow: {self.length} + {n_new} tokens > "
                f"max_seq_len {self.max_seq_len}"
            )
        self.key_mask[:, self.length : end] = token_mask
        return self.key_mask[:, :end]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write one layer's new keys/values at columns `length ..` and return all keys/values.

        Args:
            layer: decoder layer index.
            k, v: [B, H_kv, S, head_dim] for the new tokens.

        Returns:
            (keys, values), each [B, H_kv, length + S, head_dim], views into the cache.
        """
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, rows: Tensor) -> None:
        """Rebuild the batch from existing rows (beam search): new row i is old row `rows[i]`.

        Rows may repeat or drop, and the batch size may change (one prompt row expanded to
        several beams). Only the filled columns are copied.

        Args:
            rows: [B'] int64 indices into the current batch.
        """
        rows = rows.to(self.k.device)
        end = self.length
        if rows.shape[0] == self.batch_size:
            self.k[:, :, :, :end] = self.k[:, rows, :, :end]
            self.v[:, :, :, :end] = self.v[:, rows, :, :end]
            self.key_mask[:, :end] = self.key_mask[rows, :end]
        else:
            self.k = self.k.index_select(1, rows)
            self.v = self.v.index_select(1, rows)
            self.key_mask = self.key_mask.index_select(0, rows)
        if self.rope_base is not None:
            self.rope_base = self.rope_base.index_select(0, rows.to(self.rope_base.device))

    def advance(self, n_new: int) -> None:
        """Mark the S columns written by the current forward as filled."""
        self.length += n_new
