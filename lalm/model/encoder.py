"""Whisper-style audio encoder that runs on each clip's real length.

The references (transformers' Qwen2AudioEncoder, Qwen-Audio v1) always encode a 30 s window and
mask padded positions as attention keys. Here a batch is padded only to its longest clip; every
mel frame past the clip's cut-off is zeroed before the conv stem and every position past the
clip's conv length is masked as a key, so each clip's valid rows equal the reference's and do
not depend on the rest of the batch. Only the cut-off differs between the families
(`EncoderConfig.frame_cutoff`):

* "lookahead" (Qwen2-Audio): frames < L + 2 are kept. The reference convolves its padded mel,
  whose frames L and L + 1 (log-mel of the zero padding) reach valid conv2 outputs.
* "pairs" (Qwen-Audio v1): frames < 2n are kept; the v1 reference cuts its input to 2n frames
  before conv1, so its conv stem sees zeros after them.

Shape alphabet: B batch, M mel bins, T mel frames, N positions after the stem, D width, H heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm.config import EncoderConfig
from lalm.model.layers import LayerNorm


def conv_output_lengths(feature_lens: Tensor) -> Tensor:
    """Positions after the conv stem (k3 s1 p1, then k3 s2 p1): n = (L - 1) // 2 + 1.

    Args:
        feature_lens: [B] int64 real mel lengths L.

    Returns:
        [B] int64.
    """
    return (feature_lens - 1) // 2 + 1


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's positional table: [sin | cos] halves, log-spaced timescales.

    Returns:
        [length, channels] float32.
    """
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class EncoderAttention(nn.Module):
    """Bidirectional multi-head attention; `key` has no bias (Whisper names)."""

    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """x: [B, N, D]; key_mask: [B, 1, 1, N] bool (True = valid key), or None when every key
        is valid -> [B, N, D]."""
        batch, length, dim = x.shape
        heads = (batch, length, self.n_head, dim // self.n_head)
        q = self.query(x).view(heads).transpose(1, 2)
        k = self.key(x).view(heads).transpose(1, 2)
        v = self.value(x).view(heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # [B, H, N, D/H]
        return self.out(out.transpose(1, 2).reshape(batch, length, dim))


class EncoderBlock(nn.Module):
    """Pre-LN block: x += attn(attn_ln(x)); x += mlp(mlp_ln(x)) with an exact-GELU MLP."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.attn_ln = LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = EncoderAttention(config.dim, config.n_head)
        self.mlp_ln = LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.dim),
        )

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """x: [B, N, D]; key_mask: [B, 1, 1, N] bool or None (all valid) -> [B, N, D]."""
        x = x + self.attn(self.attn_ln(x), key_mask)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Conv stem + sinusoidal positions + pre-LN transformer blocks.

    Parameter names follow Whisper: `conv1`, `conv2`, `positional_embedding` (a persistent
    buffer, [n_ctx, D]), `blocks.{i}.{attn_ln, attn.{query,key,value,out}, mlp_ln, mlp.{0,2}}`.
    """

    positional_embedding: Tensor

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv1d(config.n_mels, config.dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.dim, config.dim, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(config.n_ctx, config.dim))
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layer))

    def frame_cutoffs(self, feature_lens: Tensor) -> Tensor:
        """[B] int64: index of the first mel frame the conv stem must see as zero, per clip."""
        if self.config.frame_cutoff == "lookahead":
            return feature_lens + 2
        return 2 * conv_output_lengths(feature_lens)

    def forward(self, features: Tensor, feature_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a padded batch of log-mel features.

        Args:
            features: [B, M, T] float log-mel; each clip's frames L..L+1 hold the lookahead
                frames of the contract (`lalm.audio.batch_log_mel`), anything later is ignored.
            feature_lens: [B] int64 real lengths L (without lookahead), 1 <= L.

        Returns:
            (x, x_lens): x [B, N_max, D] in the model dtype, rows >= x_lens[b] are padding;
            x_lens [B] int64 = (L - 1) // 2 + 1.

        Raises:
            ValueError: wrong mel count, too few frames for the cut-off, empty or over-long clips.
        """
        batch, n_mels, n_frames = features.shape
        if n_mels != self.config.n_mels or feature_lens.shape != (batch,):
            raise ValueError(
                f"encoder expects features [B, {self.config.n_mels}, T] and feature_lens [B]; got "
                f"{tuple(features.shape)} and {tuple(feature_lens.shape)}"
            )
        if batch == 0 or int(feature_lens.min()) < 1:
            raise ValueError("every clip needs at least one mel frame")
        x_lens = conv_output_lengths(feature_lens)
        if int(x_lens.max()) > self.config.n_ctx:
            raise ValueError(
                f"a clip of {int(feature_lens.max())} mel frames exceeds the encoder window of "
                f"{2 * self.config.n_ctx} frames; split long audio before encoding"
            )
        cutoffs = self.frame_cutoffs(feature_lens)
        used = int(cutoffs.max())
        if used > n_frames:
            raise ValueError(
                f"features have {n_frames} frames but the conv stem needs {used} "
                "(real length + lookahead frames)"
            )
        # 1. Zero every frame past each clip's cut-off: batch padding never reaches the stem.
        frame = torch.arange(used, device=features.device)
        keep = (frame[None, :] < cutoffs[:, None])[:, None, :]  # [B, 1, T']
        dtype = self.conv1.weight.dtype
        mel = torch.where(keep, features[:, :, :used].to(dtype), 0.0)
        # 2. Conv stem: [B, M, T'] -> [B, D, N_max] -> [B, N_max, D], plus positions.
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        n_max = int(x_lens.max())
        x = x[:, :n_max] + self.positional_embedding[:n_max].to(dtype)
        # 3. Blocks; positions >= x_lens are masked as keys. A batch of equal-length clips needs
        #    no mask, and SDPA without one takes a much faster kernel on the CPU.
        key_mask = None
        if bool((x_lens != n_max).any()):
            key_mask = (torch.arange(n_max, device=x.device)[None, :] < x_lens[:, None])[:, None, None]
        for block in self.blocks:
            x = block(x, key_mask)
        return x, x_lens
