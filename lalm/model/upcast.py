"""Narrow weights, float32 products: a bf16/fp16 model on a device without fast bf16/fp16 units.

A CPU without bf16 units (no AMX / AVX512-BF16) runs bf16 matrix products ~100x slower than
float32, yet casting a bf16 checkpoint to float32 doubles its memory (a 7B model then no longer
fits in 24 GiB). `upcast_compute` keeps every large weight (the Linear and Embedding matrices)
in its storage dtype and computes in float32:

* each `Linear` product upcasts its weight just in time, in blocks of output rows of at most
  `BLOCK_BYTES` float32 bytes (4 MiB: the block is still in the CPU's cache when its product
  reads it, and the full float32 weight never exists), and concatenates the block outputs;
* each `Embedding` gathers its rows in the storage dtype and returns them in float32;
* every other floating tensor (norms, biases, the conv stem, positional tables: well under 1%
  of a model's bytes) is cast to float32 once.

The result equals a float32 model holding the same (bf16-rounded) weights up to float32
summation order. Inference only: a Linear's gradient would reach its narrow weight.

`StreamLinear` is the decoder's form of the same layer for decoding (`TextDecoder.
use_decode_layout` makes a bf16 CPU decoder's Linear layers one, upcast or not): without
gradients its product is `lalm.kernels.bf16_linear`, which reads the bf16 weight once and
widens it in registers (float32 sums; the result in the input's dtype): a 7B-shaped decode
step at 1.0-1.2x its bandwidth floor, where torch's bf16 product ran at 1.6-2x
(`bench/README.md`).
Shape alphabet: N leading dims, I in features, O out features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm import kernels

#: float32 bytes of one just-in-time weight block (rows of a Linear weight).
BLOCK_BYTES = 1 << 22


class UpcastLinear(nn.Linear):
    """`nn.Linear` whose weight stays narrow and whose product runs in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        """x: [N..., I] (float32) -> [N..., O] in x's dtype."""
        weight = self.weight
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if weight.dtype == x.dtype:
            return F.linear(x, weight, bias)
        rows = max(1, BLOCK_BYTES // (weight.shape[1] * x.element_size()))
        if rows >= weight.shape[0]:
            return F.linear(x, weight.to(x.dtype), bias)
        # one block buffer per call, refilled: a fresh allocation per block costs more than
        # the cast itself on the CPU
        buffer = torch.empty(rows, weight.shape[1], dtype=x.dtype, device=x.device)
        outs = []
        for i in range(0, weight.shape[0], rows):
            block = buffer[: min(rows, weight.shape[0] - i)]
            block.copy_(weight[i:i + rows])
            outs.append(F.linear(x, block, None if bias is None else bias[i:i + rows]))
        return torch.cat(outs, dim=-1)


class StreamLinear(UpcastLinear):
    """`UpcastLinear` whose bf16 CPU product runs in `lalm.kernels.bf16_linear` where no
    gradient is wanted (module docstring); otherwise, and for other weights, `UpcastLinear`'s."""

    def forward(self, x: Tensor) -> Tensor:
        """x: [N..., I] float -> [N..., O] in x's dtype."""
        weight = self.weight
        if not (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"
                and weight.is_contiguous() and kernels.available()
                and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))):
            return super().forward(x)
        return kernels.bf16_linear(x, weight, self.bias)


def stream_bf16(module: nn.Module) -> int:
    """Make every bf16 CPU `nn.Linear` / `UpcastLinear` under `module` a `StreamLinear` (same
    parameters, names and state dict), where lalm's kernels are available. Idempotent.

    Returns:
        How many layers became one.
    """
    layers = [child for child in module.modules()
              if type(child) in (nn.Linear, UpcastLinear) and child.weight.dtype == torch.bfloat16
              and child.weight.device.type == "cpu"]
    if not layers or not kernels.available():  # in that order: other models build nothing
        return 0
    for child in layers:
        child.__class__ = StreamLinear
    return len(layers)


class UpcastEmbedding(nn.Embedding):
    """`nn.Embedding` whose table stays narrow; rows come out in `compute_dtype`."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, ids: Tensor) -> Tensor:
        """ids: [N...] int64 -> [N..., D] in `compute_dtype`."""
        return super().forward(ids).to(self.compute_dtype)


def upcast_compute(model: nn.Module, compute: torch.dtype = torch.float32) -> None:
    """Make `model` compute in `compute` while its Linear/Embedding weights keep their dtype.

    In place: every `nn.Linear` becomes an `UpcastLinear`, every `nn.Embedding` an
    `UpcastEmbedding` (same parameters, names and state dict), and every other floating
    parameter or buffer is cast to `compute` (but a quantised layer's `narrow_buffers`: its
    int4 scales and zeros, and their copy the kernel reads in bf16). Idempotent.

    Args:
        model: the model (its weights in bf16 or fp16, say).
        compute: the dtype of activations and products.
    """
    big: set[int] = set()
    for module in model.modules():
        if type(module) in (nn.Linear, UpcastLinear):
            module.__class__ = UpcastLinear
            big.add(id(module.weight))
        elif type(module) in (nn.Embedding, UpcastEmbedding):
            module.__class__ = UpcastEmbedding
            module.compute_dtype = compute
            big.add(id(module.weight))
    with torch.no_grad():
        for module in model.modules():
            for _, param in module.named_parameters(recurse=False):
                if id(param) not in big and param.is_floating_point():
                    param.data = param.data.to(compute)
            kept = getattr(module, "narrow_buffers", ())  # lalm.model.quant's layers
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and buffer.is_floating_point() and name not in kept:
                    setattr(module, name, buffer.to(compute))
