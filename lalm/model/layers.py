"""Building blocks shared by the encoder and the decoder.

Numerically sensitive steps (norms, RoPE angles, the logn factor) run in float32 and cast back,
so a bf16/fp16 model differs from the fp32 one only by its matrix products.
Shape alphabet: B batch, S text positions, K key positions, H heads, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from lalm import kernels


def project(x: Tensor, *layers: nn.Module) -> tuple[Tensor, ...]:
    """Each of `layers` applied to x: [..., in] -> one [..., out_i] per layer.

    Where every layer's product is a plain call of lalm's int8 kernel (`kernel_operands`:
    CPU int8 layers, no hooks) and no gradient is wanted, the products share one pass over x
    (`lalm.kernels.int8_linear_many`: x's digits made once, one parallel loop over every
    layer's rows), bit for bit what the layers give one by one; otherwise one by one.
    """
    operands = [getattr(layer, "kernel_operands", lambda: None)() for layer in layers]
    if (len(layers) < 2 or any(o is None for o in operands)
            or (torch.is_grad_enabled() and x.requires_grad)
            or _module._global_forward_hooks or _module._global_forward_pre_hooks):
        return tuple(layer(x) for layer in layers)
    return tuple(kernels.int8_linear_many(x, operands))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the model dtype (Whisper's `LayerNorm`)."""

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., D] any float dtype -> [..., D] same dtype."""
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm: x * rsqrt(mean(x^2) + eps) in float32, cast back, times weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., D] -> [..., D] same dtype; in one pass of lalm's kernel where it takes the
        operands (`lalm.kernels.normalizes`: inference on the CPU; the same formula, its
        mean of squares summed in float64)."""
        if kernels.normalizes(x, self.weight):
            return kernels.rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class SwiGLU(nn.Module):
    """`down(silu(gate(x)) * up(x))`, no biases (Qwen2 MLP; v1's w2 is the gate)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=False)
        self.up = nn.Linear(dim, hidden_dim, bias=False)
        self.down = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., D] -> [..., D]; `silu(gate) * up` in one pass of lalm's kernel where it
        takes the operands (`lalm.kernels.activates`: inference on the CPU)."""
        gate, up = project(x, self.gate, self.up)
        if kernels.activates(gate, up):
            return self.down(kernels.silu_mul(gate, up))
        return self.down(F.silu(gate) * up)


def rope_inv_freq(head_dim: int, base: Tensor) -> Tensor:
    """Inverse RoPE frequencies 1 / base^(2i / head_dim), float32.

    Args:
        head_dim: width of one head (even).
        base: [B] float32, the RoPE base per batch row (rows differ under dynamic NTK).

    Returns:
        [B, head_dim // 2] float32.
    """
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device=base.device)
    exponent = steps.float() / head_dim
    return 1.0 / (base[:, None] ** exponent[None, :])


def rope_cos_sin(input_pos: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rotate-half RoPE tables for per-row positions.

    Args:
        input_pos: [B, S] int64 positions.
        inv_freq: [B, head_dim // 2] float32 (from `rope_inv_freq`).
        dtype: dtype of the queries/keys the tables will multiply.

    Returns:
        (cos, sin), each [B, 1, S, head_dim]: angles θ = pos * inv_freq duplicated as [θ | θ],
        computed in float32 and cast to `dtype`.
    """
    angles = input_pos.float()[:, :, None] * inv_freq[:, None, :]  # [B, S, head_dim/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, S, head_dim]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def mrope_cos_sin(input_pos: Tensor, inv_freq: Tensor, sections: list[int], dtype: torch.dtype
                  ) -> tuple[Tensor, Tensor]:
    """M-RoPE tables (Qwen2.5-Omni): frequency pair i takes its angle from position row
    `r(i) % 3`, where r(i) is the index of the section holding pair i.

    Args:
        input_pos: [3, B, S] int64 (time, height, width) positions; three equal rows give
            exactly `rope_cos_sin`'s tables.
        inv_freq: [B, head_dim // 2] float32.
        sections: pairs per section, summing to head_dim // 2.
        dtype: dtype of the queries/keys.

    Returns:
        (cos, sin), each [B, 1, S, head_dim], the halves duplicated as in `rope_cos_sin`.
    """
    angles = input_pos.float()[..., None] * inv_freq[None, :, None, :]  # [3, B, S, hd/2]
    parts = angles.split(sections, dim=-1)
    angles = torch.cat([part[i % 3] for i, part in enumerate(parts)], dim=-1)  # [B, S, hd/2]
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, H, S, hd]; cos/sin: [B, 1, S, hd] -> x rotated (rotate-half / NeoX layout); in
    one pass of lalm's kernel, with the same bits, where it takes the operands
    (`lalm.kernels.rotates`)."""
    if kernels.rotates(x, cos, sin):
        return kernels.rope(x, cos, sin)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def ntk_alpha(prefill_len: Tensor, train_seq_len: int) -> Tensor:
    """Dynamic-NTK alpha of Qwen(-Audio) v1: max(2^ceil(log2(len / train_len) + 1) - 1, 1).

    Args:
        prefill_len: [B] int64, each row's real key length at prefill.
        train_seq_len: the model's training length (v1 `seq_length`).

    Returns:
        [B] float64 alpha (1 for rows not longer than train_seq_len).
    """
    ratio = prefill_len.double() / train_seq_len
    return (2.0 ** torch.ceil(torch.log2(ratio) + 1) - 1).clamp(min=1)


def ntk_rope_base(rope_theta: float, alpha: Tensor, head_dim: int) -> Tensor:
    """RoPE base raised by dynamic NTK: theta * alpha^(hd / (hd - 2)); alpha [B] -> [B] float32."""
    return (rope_theta * alpha ** (head_dim / (head_dim - 2))).float()


def logn_scale(input_pos: Tensor, train_seq_len: int) -> Tensor:
    """logn attention factor for queries at absolute positions p (0-based).

    Args:
        input_pos: [B, S] int64.
        train_seq_len: length past which the factor exceeds 1.

    Returns:
        [B, 1, S, 1] float32: log(p + 1) / log(train_seq_len) where p + 1 > train_seq_len, else 1.
    """
    n = (input_pos + 1).double()
    factor = torch.where(n > train_seq_len, torch.log(n) / math.log(train_seq_len), 1.0)
    return factor.float()[:, None, :, None]


def attention_mask(query_col: Tensor, key_mask: Tensor) -> Tensor:
    """Boolean causal mask over cache columns, True = attend.

    A query at column c sees keys at columns <= c that are real (`key_mask`), plus itself, so a
    padding query never has an empty row (its output is garbage nobody reads, but never NaN).

    Args:
        query_col: [S] int64, the cache column of each query, or [B, S] per row (rows of
            different lengths in one cache).
        key_mask: [B, K] bool, True for real tokens.

    Returns:
        [B, 1, S, K] bool.
    """
    key_col = torch.arange(key_mask.shape[1], device=key_mask.device)
    query_col = query_col if query_col.dim() == 2 else query_col[None]  # [B or 1, S]
    causal = key_col <= query_col[..., None]  # [B or 1, S, K]
    itself = key_col == query_col[..., None]
    return (causal & (key_mask[:, None, :] | itself))[:, None]
