"""Weight-only int8 and int4 for the decoder: symmetric int8 per output channel (or grouped),
asymmetric int4 per group of input columns.

int8: a quantised Linear keeps its weight as int8 `q` [out, in] with float `scales` [out]
(per channel) or [out, in / group_size] (grouped); the weight it stands for is `q * scales`,
where every scale is max|w| / 127 over its row (or group), so the rounding error of each
element is at most scale / 2.

int4: codes 0..15, two per byte (`weight` uint8 [out, in / 2], column 2j in the low nibble,
2j + 1 in the high one), with float `scales` and `zeros` [out, in / group_size]; the weight
is `(q - 8) * scale + zero` over each group of `group_size` input columns, scale = (max - min)
/ 15 and zero = min + 8 * scale of the group (both rounded to the model dtype before the codes
are chosen), so again the rounding error is at most scale / 2. The CPU kernel wants its own
packing of the codes (which depends on the CPU build), so an `Int4Linear` also holds that
packed copy (not saved): in memory an int4 weight costs one byte per value, as int8 does; a
decode step reads only the packed half byte. An int4 model keeps its lm_head int8 unless asked
otherwise (`HEAD_SCHEMES`).

Either way activations, norms, attention and the KV cache stay in the model dtype: only the
decoder's products read the narrow codes, which quarter/eighth (fp32) or halve/quarter (bf16)
the bytes a decode step reads.

Product paths, chosen per layer from the device and the shapes, never from the batch (batched
= single holds: a row's result does not depend on the other rows, checked for every kernel at
1, 3, 7 and 16 rows):
- CPU int8, per-channel scales: lalm's own kernel (`lalm.kernels.int8_linear`: integer
  products of the codes and the activations on a per-row 24-bit fixed-point grid, exact but
  for that rounding, about float32's; layers that share an input, q/k/v and gate/up, in one
  pass: `lalm.model.layers.project`), or where it is unavailable (`lalm.kernels.available`),
  `torch._weight_int8pack_mm` on bf16 activations (`in` a multiple of 8);
- CPU int4, `out` a multiple of 16, group size 32/64/128/256:
  `torch._weight_int4pack_mm_for_cpu` on bf16 activations
  (torch's kernels are 10-30x slower on fp32 activations on AVX2 CPUs; bf16 activations and
  scales add a relative error of ~2^-9, well below the codes' own).
- otherwise: the weight dequantised to the activation dtype for the product (correct on every
  device; it reads the codes and writes a float copy, so it is slower).

The encoder and the projector stay in the model dtype: they run once per clip (prefill-like,
compute-bound) and are small next to the decoder (the 7B's encoder is ~0.6B of its 8.4B).
Parameter names do not change (`...attn.q.weight` is the code tensor); `...scales` (and
`...zeros` for int4) are added.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm import kernels
from lalm.model.decoder import TextDecoder
from lalm.model.lalm import AudioLanguageModel
from lalm.model.lora import LoRALinear

#: Largest magnitude of a symmetric int8 code (-127..127; -128 is never used).
INT8_MAX = 127
#: Largest int4 code (codes 0..15) and the code that stands for a group's `zero`.
INT4_MAX, INT4_MID = 15, 8
#: Input columns per int4 scale/zero by default (`bench/README.md`: speed and quality by size).
INT4_GROUP_SIZE = 32
#: The group size each scheme takes for None (int8: one scale per output channel).
DEFAULT_GROUP_SIZES: dict[str, int | None] = {"int8": None, "int4": INT4_GROUP_SIZE}
#: Names of the scale and zero tensors a quantised Linear adds beside its `weight`.
SCALES, ZEROS = "scales", "zeros"
#: The decoder-layer Linear modules quantised, by their path inside a `DecoderLayer`.
LAYER_LINEARS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
_KERNEL_DTYPE = torch.bfloat16
_INT4_KERNEL_GROUPS = (32, 64, 128, 256)
_BLOCK_ELEMENTS = 1 << 24


def _check_groups(in_dim: int, group_size: int | None) -> int:
    """Groups per row (1 for None); raises ValueError if `group_size` does not divide `in_dim`."""
    if group_size is not None and (group_size <= 0 or in_dim % group_size):
        raise ValueError(f"group_size {group_size} does not divide in_features {in_dim}")
    return 1 if group_size is None else in_dim // group_size


def _row_blocks(weight: Tensor, groups: int) -> Iterator[tuple[slice, Tensor]]:
    """Blocks of rows of a [out, in] weight as float32 [rows, groups, in / groups]: the
    temporaries stay ~_BLOCK_ELEMENTS (a 7B lm_head is 0.6G values)."""
    out_dim, in_dim = weight.shape
    rows = max(1, _BLOCK_ELEMENTS // in_dim)
    for start in range(0, out_dim, rows):
        block = slice(start, start + rows)
        # reshape, not view: a decode-layout weight ([in, out]-major) is not contiguous
        yield block, weight[block].detach().float().reshape(-1, groups, in_dim // groups)


def _check_2d(weight: Tensor, bits: int) -> None:
    if weight.ndim != 2:
        raise ValueError(f"int{bits} quantisation needs a 2-D weight, got {tuple(weight.shape)}")


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
    _check_2d(weight, 8)
    out_dim, in_dim = weight.shape
    groups = _check_groups(in_dim, group_size)
    q = torch.empty(out_dim, in_dim, dtype=torch.int8, device=weight.device)
    scales = torch.empty(out_dim, groups, dtype=torch.float32, device=weight.device)
    for block, w in _row_blocks(weight, groups):
        scale = (w.abs().amax(dim=-1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
        q[block] = torch.round(w / scale[..., None]).clamp(-INT8_MAX, INT8_MAX).view(-1, in_dim)
        scales[block] = scale
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


def quantize_int4(weight: Tensor, group_size: int = INT4_GROUP_SIZE,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric int4 codes, scales and zeros of a weight matrix (module docstring).

    Args:
        weight: [out, in] float, `in` even.
        group_size: input columns sharing one scale and zero (must divide `in`).
        dtype: dtype of the scales and zeros (they are rounded to it before the codes are
            chosen, so `dequantize_int4` of the result is within half a step of `weight`).

    Returns:
        (codes, scales, zeros): codes uint8 [out, in / 2] (two 0..15 codes per byte, even
        column in the low nibble); scales and zeros [out, in / group_size] in `dtype`, scale =
        (max - min) / 15 of the group (a tiny floor keeps a constant group finite), zero = min
        + 8 * scale.

    Raises:
        ValueError: a weight that is not 2-D, an odd `in`, or a group size that does not
            divide `in`.
    """
    _check_2d(weight, 4)
    out_dim, in_dim = weight.shape
    if in_dim % 2:
        raise ValueError(f"int4 quantisation needs an even in_features, got {in_dim}")
    groups = _check_groups(in_dim, group_size)
    codes = torch.empty(out_dim, in_dim // 2, dtype=torch.uint8, device=weight.device)
    scales = torch.empty(out_dim, groups, dtype=dtype, device=weight.device)
    zeros = torch.empty_like(scales)
    for block, w in _row_blocks(weight, groups):
        low, high = w.amin(dim=-1), w.amax(dim=-1)
        scale = ((high - low) / INT4_MAX).clamp(min=torch.finfo(dtype).tiny).to(dtype)
        zero = (low + INT4_MID * scale.float()).to(dtype)
        q = torch.round((w - zero.float()[..., None]) / scale.float()[..., None]) + INT4_MID
        q = q.clamp(0, INT4_MAX).to(torch.uint8).view(-1, in_dim // 2, 2)
        codes[block] = q[..., 0] | (q[..., 1] << 4)
        scales[block], zeros[block] = scale, zero
    return codes, scales, zeros


def unpack_int4(codes: Tensor) -> Tensor:
    """uint8 [out, in / 2] two-per-byte codes -> uint8 [out, in] codes 0..15."""
    return torch.stack((codes & 0xF, codes >> 4), dim=-1).view(codes.shape[0], -1)


def dequantize_int4(codes: Tensor, scales: Tensor, zeros: Tensor,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """The weight an int4 matrix stands for.

    Args:
        codes: uint8 [out, in / 2] (`quantize_int4`).
        scales, zeros: [out, G] with G groups per row.
        dtype: result dtype.

    Returns:
        [out, in] `(q - 8) * scale + zero` over each group, in `dtype`.
    """
    q = unpack_int4(codes)
    out_dim, in_dim = q.shape
    groups = scales.shape[1]
    q = q.view(out_dim, groups, in_dim // groups).to(dtype) - INT4_MID
    return (q * scales.to(dtype)[..., None] + zeros.to(dtype)[..., None]).view(out_dim, in_dim)


class QuantizedLinear(nn.Module):
    """What `Int8Linear` and `Int4Linear` share: shapes, bias, the kernel-or-dequantise
    product (module docstring). Subclasses set `bits` and implement `_quantize` (fill the
    buffers from a float weight), `dequantize`, `uses_kernel` and `_kernel`.

    Parameters:
        bias: [out] or None, the model dtype.
    """

    bits: int
    weight: Tensor
    #: Buffers that `lalm.model.upcast.upcast_compute` keeps in their dtype, as it keeps the
    #: Linear weights: the kernel's copies (read in that dtype) and what only a dequantisation
    #: reads.
    narrow_buffers: tuple[str, ...] = ()

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 group_size: int | None, dtype: torch.dtype | None,
                 device: torch.device | str | None) -> None:
        super().__init__()
        _check_groups(in_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None) -> QuantizedLinear:
        """Quantise an `nn.Linear` (its weight [out, in] -> codes + scales in its dtype);
        `group_size` None is the scheme's default."""
        weight = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     group_size, dtype=weight.dtype, device=weight.device)
        module._quantize(weight)
        if linear.bias is not None:
            module.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return module

    def _quantize(self, weight: Tensor) -> None:
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype) -> Tensor:
        """The [out, in] weight the codes stand for, in `dtype`."""
        raise NotImplementedError

    def uses_kernel(self) -> bool:
        """Whether products run in the scheme's CPU kernel (module docstring)."""
        raise NotImplementedError

    def _kernel(self, rows: Tensor) -> Tensor:
        """[N, in] float (the activations' dtype) -> [N, out] float through the kernel."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in] float -> [..., out] in x's dtype."""
        if self.uses_kernel():
            y = self._kernel(x.reshape(-1, self.in_features))
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, group_size={self.group_size}")


class Int8Linear(QuantizedLinear):
    """A Linear whose weight is int8 codes times float scales (module docstring).

    Buffers (persistent: they are the checkpoint):
        weight: [out, in] int8.
        scales: [out] or [out, in / group_size], the model dtype.
    Parameters:
        bias: [out] or None, the model dtype.
    """

    bits = 8
    scales: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 group_size: int | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, group_size, dtype, device)
        scale_shape = (out_features,) if group_size is None else (
            out_features, in_features // group_size)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8,
                                                   device=device))
        self.register_buffer(SCALES, torch.ones(scale_shape, dtype=dtype, device=device))

    def _quantize(self, weight: Tensor) -> None:
        q, scales = quantize_int8(weight, self.group_size)
        self.weight = q.contiguous()
        self.scales = scales.to(weight.dtype)

    def dequantize(self, dtype: torch.dtype) -> Tensor:
        return dequantize_int8(self.weight, self.scales, dtype)

    def uses_kernel(self) -> bool:
        return (self.weight.device.type == "cpu" and self.group_size is None
                and (kernels.available() or self.in_features % 8 == 0))

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in] float -> [..., out] in x's dtype (lalm's kernel adds the bias itself)."""
        if self.uses_kernel() and kernels.available():
            return kernels.int8_linear(x, self.weight, self.scales, self.bias)
        return super().forward(x)

    def kernel_operands(self) -> tuple[Tensor, Tensor, Tensor | None] | None:
        """(codes, scales, bias) where `forward` is a plain call of lalm's int8 kernel (no
        hooks, no replaced forward), so `lalm.model.layers.project` may run it with other
        products of the same input; else None."""
        if not (self.uses_kernel() and kernels.available()) or self._forward_hooks \
                or self._forward_pre_hooks or "forward" in self.__dict__:
            return None
        return self.weight, self.scales, self.bias

    def _kernel(self, rows: Tensor) -> Tensor:
        return torch._weight_int8pack_mm(rows.to(_KERNEL_DTYPE).contiguous(), self.weight,
                                         self.scales.to(_KERNEL_DTYPE))


def int4_group_size(in_features: int, group_size: int) -> int:
    """The group an int4 layer of width `in_features` uses for a requested `group_size`: the
    largest divisor of the width not above it (the width itself where narrower; the real
    models' widths are multiples of 128, so there it is `group_size`).

    Raises:
        ValueError: a group size that is not positive.
    """
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    return next(g for g in range(min(group_size, in_features), 0, -1) if in_features % g == 0)


class Int4Linear(QuantizedLinear):
    """A Linear whose weight is int4 codes with a float scale and zero per group of input
    columns (module docstring). `group_size` is the requested group (`max_group_size`; None:
    `INT4_GROUP_SIZE`); the layer uses `int4_group_size` of it (`group_size`).

    Buffers (persistent: they are the checkpoint):
        weight: [out, in / 2] uint8, two codes per byte.
        scales, zeros: [out, in / group_size], the model dtype.
    Buffers (not saved; rebuilt from those whenever they are set or loaded):
        packed: the codes in the CPU kernel's layout, where `uses_kernel`.
        scales_and_zeros: [in / group_size, out, 2] bf16, the kernel's form of the two.
    Parameters:
        bias: [out] or None, the model dtype.
    """

    bits = 4
    narrow_buffers = (SCALES, ZEROS, "scales_and_zeros")
    scales: Tensor
    zeros: Tensor
    packed: Tensor | None
    scales_and_zeros: Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 group_size: int | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        if in_features % 2:
            raise ValueError(f"int4 needs an even in_features, got {in_features}")
        asked = DEFAULT_GROUP_SIZES["int4"] if group_size is None else group_size
        group_size = int4_group_size(in_features, asked)
        super().__init__(in_features, out_features, bias, group_size, dtype, device)
        self.max_group_size = asked
        groups = in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2,
                                                   dtype=torch.uint8, device=device))
        self.register_buffer(SCALES, torch.ones(out_features, groups, dtype=dtype, device=device))
        self.register_buffer(ZEROS, torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("packed", None, persistent=False)
        self.register_buffer("scales_and_zeros", None, persistent=False)
        self.register_load_state_dict_post_hook(_pack_after_load)

    def _quantize(self, weight: Tensor) -> None:
        self.weight, self.scales, self.zeros = quantize_int4(weight, self.group_size,
                                                             weight.dtype)
        self.pack()

    def pack(self) -> None:
        """(Re)build the kernel's copies of the codes, scales and zeros (a no-op off the
        kernel path and on the meta device)."""
        self.packed = self.scales_and_zeros = None
        if not self.uses_kernel():
            return
        codes = self.weight
        # the packing op wants int32 [rows, in] codes: blocks of whole 64-row tiles keep that
        # temporary small (packing row blocks apart equals packing them together: tested)
        rows = max(64, _BLOCK_ELEMENTS // self.in_features // 64 * 64)
        self.packed = torch.cat([
            torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                unpack_int4(codes[start:start + rows]).to(torch.int32), 1)
            for start in range(0, self.out_features, rows)])
        self.scales_and_zeros = torch.stack((self.scales, self.zeros), dim=-1).transpose(
            0, 1).to(_KERNEL_DTYPE).contiguous()

    def dequantize(self, dtype: torch.dtype) -> Tensor:
        return dequantize_int4(self.weight, self.scales, self.zeros, dtype)

    def uses_kernel(self) -> bool:
        return (self.weight.device.type == "cpu" and self.out_features % 16 == 0
                and self.group_size in _INT4_KERNEL_GROUPS)

    def _kernel(self, rows: Tensor) -> Tensor:
        if self.packed is None:
            raise RuntimeError("Int4Linear: the kernel's packed codes were never built "
                               "(pack() after setting the buffers)")
        return torch._weight_int4pack_mm_for_cpu(rows.to(_KERNEL_DTYPE).contiguous(),
                                                 self.packed, self.group_size,
                                                 self.scales_and_zeros)  # bf16 since pack()


def _pack_after_load(module: Int4Linear, _incompatible: object) -> None:
    """`load_state_dict` post-hook: the loaded codes get their kernel copies."""
    module.pack()


#: The weight-only schemes by name: `quantize_model`'s `scheme`.
SCHEMES: dict[str, type[QuantizedLinear]] = {"int8": Int8Linear, "int4": Int4Linear}
#: The lm_head's scheme by default for each scheme. int4 keeps the head int8: the vocabulary
#: projection is the matrix most sensitive to rounding (SmolLM2-135M, `bench/README.md`: int4
#: of the head alone cost +4.8 % perplexity, int8 of it +0.3 %), and int8 costs a 7B step
#: only ~0.25 GB more (llama.cpp's 4-bit files likewise keep their output matrix wider).
HEAD_SCHEMES = {"int8": "int8", "int4": "int8"}


def quantized_module_names(decoder: TextDecoder, include_lm_head: bool = True) -> list[str]:
    """Paths (inside the decoder) of the Linear modules `quantize_model` replaces."""
    names = [f"layers.{i}.{name}" for i in range(len(decoder.layers)) for name in LAYER_LINEARS]
    return [*names, "lm_head"] if include_lm_head else names


def quantize_model(model: AudioLanguageModel | TextDecoder, scheme: str = "int8", *,
                   lm_head: str | None = "auto", group_size: int | None = None) -> None:
    """Replace the decoder's Linear layers (and its lm_head) by quantised ones, in place.

    The encoder, projector, embedding and norms keep their dtype (module docstring). Works on
    a meta-device model too (then the code buffers are meta, to be filled by
    `load_state_dict(assign=True)` from a saved quantised checkpoint). Modules already in
    their scheme are left as they are, and so are LoRA-adapted ones (`lalm.model.lora`: a
    gated adapter stays unmerged on its float base).

    Args:
        model: the model (or its decoder alone).
        scheme: the decoder layers' scheme, "int8" | "int4" (`SCHEMES`).
        lm_head: the vocabulary projection's scheme (the largest single matrix): "auto"
            (`HEAD_SCHEMES[scheme]`), "int8" | "int4", or None to keep it float.
        group_size: input columns per scale of the `scheme` layers (and of the head where it
            is in `scheme` too); None: the scheme's default (int8: one scale per output
            channel, the fast CPU kernel; int4: `INT4_GROUP_SIZE`). A head in the other scheme
            takes that scheme's default.

    Raises:
        ValueError: an unknown scheme, a module already in another scheme, or a group size
            that does not divide a layer's input width.
    """
    head = HEAD_SCHEMES.get(scheme) if lm_head == "auto" else lm_head
    for name in (scheme, head):
        if name is not None and name not in SCHEMES:
            raise ValueError(f"quantisation scheme must be one of {', '.join(SCHEMES)}, "
                             f"got {name!r}")
    decoder = model.decoder if isinstance(model, AudioLanguageModel) else model
    plan = [(name, scheme, group_size) for name in quantized_module_names(decoder, False)]
    if head is not None:
        plan.append(("lm_head", head, group_size if head == scheme else None))
    for name, kind_name, group in plan:
        kind = SCHEMES[kind_name]
        parent_name, _, attr = name.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        linear = getattr(parent, attr)
        if isinstance(linear, (kind, LoRALinear)):  # adapted layers keep their float weights
            continue
        if isinstance(linear, QuantizedLinear):
            raise ValueError(f"decoder.{name} is already int{linear.bits}, not {kind_name}")
        setattr(parent, attr, kind.from_linear(linear, group))
