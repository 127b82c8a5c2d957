"""Weight-only int8 for the decoder: symmetric per-output-channel (or grouped) scales.

A quantised Linear keeps its weight as int8 `q` [out, in] with float `scales` [out] (per
channel) or [out, in / group_size] (grouped); the weight it stands for is `q * scales`, where
every scale is max|w| / 127 over its row (or group), so the rounding error of each element is
at most scale / 2. Activations, norms, attention and the KV cache stay in the model dtype: only
the decoder's products read int8, which quarters (fp32) or halves (bf16) the bytes a decode
step reads.

Product paths, chosen per layer from the device and the shapes, never from the batch (batched
= single holds: a row's result does not depend on the other rows):
- CPU, per-channel scales, `in` a multiple of 8: `torch._weight_int8pack_mm` on bf16
  activations (the int8 kernel is ~10x slower on fp32 activations on AVX2 CPUs; bf16
  activations and scales add a relative error of ~2^-9, well below int8's own).
- otherwise: the weight dequantised to the activation dtype for the product (correct on every
  device; it reads the int8 weight and writes a float copy, so it is slower).

The encoder and the projector stay in the model dtype: they run once per clip (prefill-like,
compute-bound) and are small next to the decoder (the 7B's encoder is ~0.6B of its 8.4B).
Parameter names do not change (`...attn.q.weight` is the int8 tensor); `...scales` is added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm.model.decoder import TextDecoder
from lalm.model.lalm import AudioLanguageModel

#: Largest magnitude of a symmetric int8 code (-127..127; -128 is never used).
INT8_MAX = 127
#: Name of the scale tensor each quantised Linear adds beside its `weight`.
SCALES = "scales"
#: The decoder-layer Linear modules quantised, by their path inside a `DecoderLayer`.
LAYER_LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
_KERNEL_DTYPE = torch.bfloat16
_BLOCK_ELEMENTS = 1 << 24


def quantize_int8(weight: Tensor, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric int8 codes and scales of a weight matrix.

    Args:
        weight: [out, in] float.
        group_size: columns sharing one scale (must divide `in`); None: one scale per row.

    Returns:
        (q, scales): q [out, in] int8 in -127..127; scales float32 [out] (per row) or
        [out, in / group_size], each max|w| / 127 over its row/group (a tiny floor keeps an
        all-zero row finite).

    Raises:
        ValueError: a weight that is not 2-D, or a group size that does not divide `in`.
    """
    if weight.ndim != 2:
        raise ValueError(f"int8 quantisation needs a 2-D weight, got {tuple(weight.shape)}")
    out_dim, in_dim = weight.shape
    groups = 1 if group_size is None else in_dim // max(group_size, 1)
    if group_size is not None and (group_size <= 0 or in_dim % group_size):
        raise ValueError(f"group_size {group_size} does not divide in_features {in_dim}")
    q = torch.empty(out_dim, in_dim, dtype=torch.int8, device=weight.device)
    scales = torch.empty(out_dim, groups, dtype=torch.float32, device=weight.device)
    # blocks of rows: float32 temporaries stay ~_BLOCK_ELEMENTS (a 7B lm_head is 0.6G values)
    rows = max(1, _BLOCK_ELEMENTS // in_dim)
    for start in range(0, out_dim, rows):
        # reshape, not view: a decode-layout weight ([in, out]-major) is not contiguous
        w = weight[start:start + rows].detach().float().reshape(-1, groups, in_dim // groups)
        scale = (w.abs().amax(dim=-1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        q[start:start + rows] = torch.round(w / scale[..., None]).clamp(
            -INT8_MAX, INT8_MAX).view(-1, in_dim)
        scales[start:start + rows] = scale
    return q, scales[:, 0] if group_size is None else scales


def dequantize_int8(q: Tensor, scales: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The weight a quantised matrix stands for.

    Args:
        q: [out, in] int8.
        scales: [out] or [out, G] with G groups per row.
        dtype: result dtype.

    Returns:
        [out, in] `q * scales` (scales broadcast over their row/group) in `dtype`.
    """
    out_dim, in_dim = q.shape
    if scales.ndim == 1:
        return q.to(dtype) * scales.to(dtype)[:, None]
    groups = scales.shape[1]
    w = q.view(out_dim, groups, in_dim // groups).to(dtype) * scales.to(dtype)[..., None]
    return w.view(out_dim, in_dim)


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 codes times float scales (module docstring).

    Buffers (persistent: they are the checkpoint):
        weight: [out, in] int8.
        scales: [out] or [out, in / group_size], the model dtype.
    Parameters:
        bias: [out] or None, the model dtype.
    """

    weight: Tensor
    scales: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 group_size: int | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if group_size is not None and (group_size <= 0 or in_features % group_size):
            raise ValueError(f"group_size {group_size} does not divide in_features "
                             f"{in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        scale_shape = (out_features,) if group_size is None else (
            out_features, in_features // group_size)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8,
                                                   device=device))
        self.register_buffer(SCALES, torch.ones(scale_shape, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None) -> Int8Linear:
        """Quantise an `nn.Linear` (its weight [out, in] -> int8 + scales in its dtype)."""
        weight = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     group_size, dtype=weight.dtype, device=weight.device)
        q, scales = quantize_int8(weight, group_size)
        module.weight = q.contiguous()
        module.scales = scales.to(weight.dtype)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return module

    def uses_int8_kernel(self) -> bool:
        """Whether products run in `torch._weight_int8pack_mm` (module docstring)."""
        return (self.weight.device.type == "cpu" and self.group_size is None
                and self.in_features % 8 == 0)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in] float -> [..., out] in x's dtype."""
        if self.uses_int8_kernel():
            rows = x.reshape(-1, self.in_features).to(_KERNEL_DTYPE).contiguous()
            y = torch._weight_int8pack_mm(rows, self.weight, self.scales.to(_KERNEL_DTYPE))
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        weight = dequantize_int8(self.weight, self.scales, x.dtype)
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}")


def quantized_module_names(decoder: TextDecoder, include_lm_head: bool = True) -> list[str]:
    """Paths (inside the decoder) of the Linear modules `quantize_model_int8` replaces."""
    names = [f"layers.{i}.{name}" for i in range(len(decoder.layers)) for name in LAYER_LINEARS]
    return [*names, "lm_head"] if include_lm_head else names


def quantize_model_int8(model: AudioLanguageModel | TextDecoder, *, include_lm_head: bool = True,
                        group_size: int | None = None) -> None:
    """Replace the decoder's Linear layers (and its lm_head) by `Int8Linear`, in place.

    The encoder, projector, embedding and norms keep their dtype (module docstring). Works on
    a meta-device model too (then the int8 buffers are meta, to be filled by
    `load_state_dict(assign=True)` from a saved quantised checkpoint). Already quantised
    modules are left as they are.

    Args:
        model: the model (or its decoder alone).
        include_lm_head: also quantise the vocabulary projection (the largest single matrix).
        group_size: None for per-output-channel scales (the fast CPU kernel), else columns per
            scale group.

    Raises:
        ValueError: a group size that does not divide a layer's input width.
    """
    decoder = model.decoder if isinstance(model, AudioLanguageModel) else model
    for name in quantized_module_names(decoder, include_lm_head):
        parent_name, _, attr = name.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        linear = getattr(parent, attr)
        if isinstance(linear, Int8Linear):
            continue
        setattr(parent, attr, Int8Linear.from_linear(linear, group_size))
