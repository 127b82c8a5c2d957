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

A windowed encoder (`EncoderConfig.n_window`: Qwen2.5-Omni, Qwen3-ASR) cuts each clip into
chunks of 2 * n_window mel frames (frames >= L are zero) and runs the stem on every chunk alone:
Whisper's conv pair with conv1's outputs past the chunk's length zeroed (Omni), or three stride-2
Conv2d and a Linear (`stem="conv2d"`, Qwen3-ASR). Positions restart at 0 in each chunk; a
position attends only to the valid positions of its window (`window_chunks` chunks): the
references' block-diagonal `cu_seqlens` attention, computed here as a batch of windows.
Zeros from frame L on equal Omni's reference exactly (it keeps only each clip's L frames); the
Qwen3-ASR reference model convolves whatever its input holds there, which its feature extractor
fills with the log-mel of padded silence (zeros for the longest clip of a batch), so lalm
matches it where those frames are zero, and each clip gives the same rows in any batch.

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


def stem_output_lengths(lengths: Tensor, n_conv: int) -> Tensor:
    """Positions after `n_conv` stride-2 convolutions (k3 p1), 0 for an empty input. [C] -> [C]."""
    for _ in range(n_conv):
        lengths = torch.where(lengths > 0, (lengths - 1) // 2 + 1, 0)
    return lengths


def _stride2_length(length: int, n_conv: int) -> int:
    """`stem_output_lengths` of one positive length, as a Python int (also on the meta device)."""
    for _ in range(n_conv):
        length = (length - 1) // 2 + 1
    return length


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
    """Bidirectional multi-head attention; `key` has no bias unless told (Whisper names)."""

    def __init__(self, dim: int, n_head: int, key_bias: bool = False) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=key_bias)
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
        self.attn = EncoderAttention(config.dim, config.n_head, config.key_bias)
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
    A windowed encoder stores no positional table (its references compute it; so does
    `forward`); the "conv2d" stem has `conv2d1`..`conv2d3` and `conv_out` instead of the convs.
    """

    positional_embedding: Tensor | None

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        if config.stem == "conv1d":
            self.conv1 = nn.Conv1d(config.n_mels, config.dim, kernel_size=3, padding=1)
            self.conv2 = nn.Conv1d(config.dim, config.dim, kernel_size=3, stride=2, padding=1)
        else:
            width = config.stem_channels
            self.conv2d1 = nn.Conv2d(1, width, kernel_size=3, stride=2, padding=1)
            self.conv2d2 = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
            self.conv2d3 = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
            mel_rows = _stride2_length(config.n_mels, 3)
            self.conv_out = nn.Linear(width * mel_rows, config.dim, bias=False)
        if config.n_window is None:
            self.register_buffer("positional_embedding", sinusoids(config.n_ctx, config.dim))
        else:
            self.positional_embedding = None
            if self.chunk_positions > config.n_ctx:
                raise ValueError(f"encoder.n_ctx {config.n_ctx} < {self.chunk_positions} "
                                 "positions of one chunk")
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layer))

    @property
    def chunk_positions(self) -> int:
        """Positions the stem makes of one full chunk of 2 * n_window frames (windowed only)."""
        n_conv = 1 if self.config.stem == "conv1d" else 3
        return _stride2_length(2 * (self.config.n_window or 0), n_conv)

    @property
    def stem_weight(self) -> Tensor:
        """The first stem product's weight: the log-mel input takes its dtype and device."""
        return self.conv1.weight if self.config.stem == "conv1d" else self.conv2d1.weight

    @property
    def max_frames(self) -> int | None:
        """The longest clip in mel frames (2 * n_ctx), or None for a windowed encoder, which
        takes any length (its positions restart in every chunk)."""
        return 2 * self.config.n_ctx if self.config.n_window is None else None

    def output_lengths(self, feature_lens: Tensor) -> Tensor:
        """[B] int64 encoder positions of clips of L mel frames: (L - 1) // 2 + 1 for the whole-
        clip stem; for a windowed one the sum over its chunks (full chunks give
        `chunk_positions`, the last one what the stem makes of its frames)."""
        if self.config.n_window is None:
            return conv_output_lengths(feature_lens)
        chunk = 2 * self.config.n_window
        n_conv = 1 if self.config.stem == "conv1d" else 3
        return (feature_lens // chunk) * self.chunk_positions + stem_output_lengths(
            feature_lens % chunk, n_conv)

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

        A windowed encoder needs only T >= max(L) and returns `output_lengths(feature_lens)`
        rows per clip.
        """
        batch, n_mels, n_frames = features.shape
        if n_mels != self.config.n_mels or feature_lens.shape != (batch,):
            raise ValueError(
                f"encoder expects features [B, {self.config.n_mels}, T] and feature_lens [B]; got "
                f"{tuple(features.shape)} and {tuple(feature_lens.shape)}"
            )
        if batch == 0 or int(feature_lens.min()) < 1:
            raise ValueError("every clip needs at least one mel frame")
        if self.config.n_window is not None:
            return self._windowed(features, feature_lens)
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

    def _stem(self, chunks: Tensor, chunk_lens: Tensor) -> Tensor:
        """Stem of a windowed encoder on each chunk alone.

        Args:
            chunks: [C, M, W] mel chunks (W = 2 * n_window), zero from each chunk's length on.
            chunk_lens: [C] int64 frames of each chunk.

        Returns:
            [C, chunk_positions, D].
        """
        if self.config.stem == "conv1d":
            # conv1's outputs past the chunk's frames are zeroed before conv2, as in Omni
            frame = torch.arange(chunks.shape[2], device=chunks.device)
            keep = frame[None, :] < chunk_lens[:, None]
            x = F.gelu(self.conv1(chunks)) * keep[:, None, :].to(chunks.dtype)
            return F.gelu(self.conv2(x)).transpose(1, 2)
        x = F.gelu(self.conv2d1(chunks[:, None]))  # [C, ch, M', W']
        x = F.gelu(self.conv2d2(x))
        x = F.gelu(self.conv2d3(x))  # [C, ch, M'', P]
        return self.conv_out(x.permute(0, 3, 1, 2).flatten(2))  # [C, P, ch * M''] -> [C, P, D]

    def _windowed(self, features: Tensor, feature_lens: Tensor) -> tuple[Tensor, Tensor]:
        """`forward` of a windowed encoder (module docstring); same arguments and results."""
        cfg = self.config
        batch, n_mels, n_frames = features.shape
        chunk = 2 * (cfg.n_window or 0)
        if int(feature_lens.max()) > n_frames:
            raise ValueError(f"features have {n_frames} frames but a clip has "
                             f"{int(feature_lens.max())}")
        # 1. Chunks of every clip ([B * C_max, M, W]); frames past a clip's length are zero.
        n_chunks = -(-int(feature_lens.max()) // chunk)
        used = n_chunks * chunk
        dtype = self._stem_dtype()
        mel = F.pad(features[:, :, :used].to(dtype), (0, max(0, used - n_frames)))
        frame = torch.arange(used, device=features.device)
        mel = torch.where((frame[None, :] < feature_lens[:, None])[:, None, :], mel, 0.0)
        chunks = mel.unflatten(2, (n_chunks, chunk)).transpose(1, 2).flatten(0, 1)
        starts = torch.arange(n_chunks, device=features.device) * chunk
        chunk_lens = (feature_lens[:, None] - starts[None, :]).clamp(0, chunk).flatten()
        # 2. Stem per chunk, positions restarting in each chunk; clips' rows back to back
        #    ([B, C_max * P, D]: only a clip's last chunk can be short, so its rows are a prefix).
        per_chunk = self.chunk_positions
        x = self._stem(chunks, chunk_lens)
        x = x + sinusoids(per_chunk, cfg.dim).to(device=x.device, dtype=x.dtype)
        x = x.unflatten(0, (batch, n_chunks)).flatten(1, 2)
        x_lens = self.output_lengths(feature_lens)
        # 3. Attention windows of `window_chunks` chunks as a batch; windows without a valid
        #    row are left out (their rows are padding), the others mask their padding keys.
        width = per_chunk * cfg.window_chunks
        n_win = -(-x.shape[1] // width)
        x = F.pad(x, (0, 0, 0, n_win * width - x.shape[1]))
        row = torch.arange(n_win * width, device=x.device)
        valid = (row[None, :] < x_lens[:, None]).view(batch * n_win, width)
        windows = x.view(batch * n_win, width, cfg.dim)
        used_win = valid.any(dim=1).nonzero().squeeze(1)
        h, h_valid = windows[used_win], valid[used_win]
        key_mask = None if bool(h_valid.all()) else h_valid[:, None, None, :]
        for block in self.blocks:
            h = block(h, key_mask)
        out = torch.zeros_like(windows).index_copy(0, used_win, h)
        n_max = int(x_lens.max())
        return out.view(batch, n_win * width, cfg.dim)[:, :n_max], x_lens

    def _stem_dtype(self) -> torch.dtype:
        """The dtype of the stem's first weight (the model dtype)."""
        first = self.conv1 if self.config.stem == "conv1d" else self.conv2d1
        return first.weight.dtype
