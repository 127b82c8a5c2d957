"""Encoder output -> decoder-width audio rows: stride-2 average pool, `ln_post`, `proj`.

Qwen-Audio, Qwen2-Audio and Qwen2.5-Omni pool and project the same way; Qwen-Audio v1
additionally frames each clip with two learned rows (`audio_bos_eos`), which take the places of
its `<audio>` / `</audio>` tokens. Qwen3-ASR (`kind="mlp"`) keeps every encoder row: `ln_post`,
Linear `hidden`, GELU, Linear `proj`.
Shape alphabet: B batch, N encoder positions, D_enc / D widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm.config import ProjectorConfig
from lalm.model.layers import LayerNorm


def audio_row_counts(x_lens: Tensor) -> Tensor:
    """Audio tokens per clip after the stride-2 pool: (n - 2) // 2 + 1 == n // 2. [B] -> [B]."""
    return x_lens // 2


class Projector(nn.Module):
    """AvgPool1d(2, 2) over time, LayerNorm `ln_post`, Linear `proj` (+ v1 BOS/EOS rows); or,
    `kind="mlp"`, `ln_post`, `hidden`, GELU, `proj` on every row."""

    def __init__(self, config: ProjectorConfig, encoder_dim: int, out_dim: int) -> None:
        super().__init__()
        self.config = config
        self.ln_post = LayerNorm(encoder_dim, eps=config.norm_eps)
        self.hidden = nn.Linear(encoder_dim, encoder_dim) if config.kind == "mlp" else None
        self.proj = nn.Linear(encoder_dim, out_dim)
        self.audio_bos_eos = nn.Parameter(torch.zeros(2, out_dim)) if config.audio_bos_eos else None

    def row_counts(self, x_lens: Tensor) -> Tensor:
        """[B] audio rows per clip of [B] encoder lengths (with the v1 BOS/EOS rows)."""
        rows = x_lens if self.hidden is not None else audio_row_counts(x_lens)
        return rows + 2 if self.audio_bos_eos is not None else rows

    def forward(self, x: Tensor, x_lens: Tensor) -> list[Tensor]:
        """Pool and project each clip's valid encoder rows.

        Args:
            x: [B, N_max, D_enc] encoder output (rows >= x_lens[b] are padding).
            x_lens: [B] int64 valid rows per clip.

        Returns:
            One tensor per clip: [n // 2, D] rows, or [n // 2 + 2, D] with the learned BOS row
            first and EOS row last when `audio_bos_eos` is on; [n, D] for `kind="mlp"`.
        """
        if self.hidden is not None:
            rows = self.proj(F.gelu(self.hidden(self.ln_post(x))))  # [B, N_max, D]
            return [rows[b, :count] for b, count in enumerate(x_lens.tolist())]
        # AvgPool1d(2, 2) over time; (a + b) / 2 exactly as the pool computes it, and defined
        # for a batch whose longest clip has a single position (no audio tokens).
        pairs = x.shape[1] // 2
        pooled = x[:, : 2 * pairs].unflatten(1, (pairs, 2)).mean(dim=2)
        rows = self.proj(self.ln_post(pooled))  # [B, N_max // 2, D]
        counts = audio_row_counts(x_lens).tolist()
        clips = [rows[b, :count] for b, count in enumerate(counts)]
        if self.audio_bos_eos is None:
            return clips
        bos, eos = self.audio_bos_eos.to(rows.dtype).split(1)
        return [torch.cat([bos, clip, eos]) for clip in clips]
