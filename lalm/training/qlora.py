"""QLoRA-style training (Dettmers et al. 2023) on lalm's int8: LoRA adapters in full precision
over a frozen int8 copy of the decoder's base weights (``lora.base_precision: int8``).

`quantize_lora_base` turns each decoder `LoRALinear` into an `Int8LoRALinear`: the base weight
becomes `lalm.model.quant.Int8Linear` (per-output-channel int8 codes + scales, a quarter of the
fp32 bytes; its product on CPU is the int8 kernel), the adapters ``lora_a`` / ``lora_b`` stay as
they were (the same parameters, model dtype, trained). The int8 kernel has no backward, so
the base product runs in `FrozenInt8Product`: forward the int8 layer, backward only the
gradient of its input, ``grad @ (q * scales)`` (the base gets none: it is frozen). The adapters
are the same objects as without int8, so the PEFT export (`lalm.checkpoint.peft`)
and the merge (``W_int8 + (alpha / r) B A``, in full precision) work unchanged; the adapter
applies to the full-precision base as QLoRA adapters do, off by int8's rounding of the base.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lalm.errors import ConfigError
from lalm.model.lora import LoRALinear
from lalm.model.quant import LAYER_LINEARS, Int8Linear, dequantize_int8, quantize_int8


class FrozenInt8Product(torch.autograd.Function):
    """``base(x)`` for a frozen `Int8Linear`, with the gradient of `x` (not of the base)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor,  # type: ignore[override]
                base: Int8Linear) -> Tensor:
        ctx.base = base  # type: ignore[attr-defined]
        return base(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,  # type: ignore[override]
                 grad: Tensor) -> tuple[Tensor, None]:
        base: Int8Linear = ctx.base  # type: ignore[attr-defined]
        return grad @ dequantize_int8(base.weight, base.scales, grad.dtype), None


class Int8LoRALinear(LoRALinear):
    """A `LoRALinear` whose frozen base is int8 (module docstring).

    Attributes:
        base: the `Int8Linear` of the base weight (int8 [out, in] + scales [out]; no bias).
        bias: the base bias, frozen, in the model dtype (or None).
        lora_a, lora_b, scaling: as `LoRALinear`.
    """

    @classmethod
    def from_lora(cls, layer: LoRALinear) -> Int8LoRALinear:
        """The int8 version of `layer`, sharing its adapters and bias."""
        weight = layer.weight
        new = cls(layer.in_features, layer.out_features, False, layer.rank, 1.0,
                  device=torch.device("meta"), dtype=weight.dtype)
        del new.weight  # the base lives in `base` only
        base = Int8Linear(layer.in_features, layer.out_features, False, dtype=weight.dtype,
                          device=weight.device)
        q, scales = quantize_int8(weight)
        base.weight, base.scales = q, scales.to(weight.dtype)
        new.base = base
        new.bias = layer.bias
        new.lora_a, new.lora_b, new.lora_dropout = layer.lora_a, layer.lora_b, layer.lora_dropout
        new.rank, new.scaling = layer.rank, layer.scaling
        return new

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_features] -> [..., out_features] in x's dtype."""
        y = FrozenInt8Product.apply(x, self.base)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y + self.update(x) if self.adapter_enabled else y

    def merged_weight(self) -> Tensor:
        """(q * scales) + (alpha / r) B A: [out, in] in the adapters' dtype, computed in fp32."""
        delta = self.lora_b.float() @ self.lora_a.float()
        base = dequantize_int8(self.base.weight, self.base.scales, torch.float32)
        return (base + self.scaling * delta).to(self.lora_a.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rank={self.rank}, scaling={self.scaling:g}, "
                f"base=int8")


def quantize_lora_base(decoder: nn.Module) -> int:
    """Make the base of every adapted decoder-layer Linear int8, in place (module docstring).

    Args:
        decoder: a `lalm.model.TextDecoder` after `lalm.training.lora.apply_lora`.

    Returns:
        The number of layers made int8.

    Raises:
        ConfigError: a decoder-layer Linear without adapters (``lora.targets`` must cover
            every one of `LAYER_LINEARS`: an int8 layer without adapters would be frozen and
            a full-precision one would keep its bytes).
    """
    count = 0
    for index, layer in enumerate(decoder.layers):
        for name in LAYER_LINEARS:
            parent_name, _, attr = name.rpartition(".")
            parent = layer.get_submodule(parent_name)
            child = getattr(parent, attr)
            if isinstance(child, Int8LoRALinear):
                continue
            if not isinstance(child, LoRALinear):
                raise ConfigError(f"lora.base_precision=int8 needs adapters on every decoder "
                                  f"Linear; decoder.layers.{index}.{name} has none (add "
                                  f"{name!r} to lora.targets)")
            setattr(parent, attr, Int8LoRALinear.from_lora(child))
            count += 1
    return count
