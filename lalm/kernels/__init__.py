"""lalm's CPU kernels for weight-streaming products (decoding reads every weight once a step).

`int8_linear` and `bf16_linear` compute y = x W^T with W kept in its narrow storage (int8
codes and a scale per output row; bf16) as it streams from memory (`linear.c`): at batch 1 a
decode step is bound by how fast the weights are read, and these kernels read at the
machine's bandwidth where torch's int8/bf16 CPU kernels read at 0.5-0.8 of it
(`bench/README.md`). bf16 is widened to float32 in registers. int8 is multiplied in integers,
exactly: each row of x is rounded once to a 24-bit fixed-point grid (an error of about its
largest element's float32 rounding, at most) held as three int8 digits, and 64 code bytes take
four u8 x s8 dot-product instructions (AVX-512 VNNI, AVX-VNNI: the three digits and W's row
sum) where widening them to float32 takes twelve; AVX2 without VNNI holds it as two int16
digits and multiplies them with the codes widened to int16 (two multiply-adds per 16 codes).
Every output row is computed the same way whatever the number of rows or threads, so a
sequence decodes to the same bits alone or in a batch; the int8 product's bits are also the
same on every vector path (its sums are exact).

`decode_attention` is a decode step's attention (one new query per row over the KV cache),
which torch's CPU attention reads from memory at a fraction of the bandwidth (1.4-1.5x faster
in float32 and 5-7x in bf16 on a CPU without bf16 units, `bench/bench_decode_attention.py`);
`Attention` takes it wherever `attends` says it can.

`rms_norm` and `rope` are the row-wise steps between a layer's products (RMSNorm; RoPE, with
the bits of torch's ops) in one pass each: in a decode step, after the products have streamed
hundreds of MiB through the caches, each of torch's small ops costs tens of microseconds more
than in isolation, and an RMSNorm takes six of them. `RMSNorm` and `apply_rope` take them
wherever `normalizes` and `rotates` say they can (inference on the CPU); `silu_mul` is
SwiGLU's activation, which `SwiGLU` takes where `activates` says so.

`DecodeLayers` runs a decode step's decoder layers in one call, each step by the kernel the
modules call (float32 weights: `f32_linear`, a float32 weight streamed in its decode layout,
where the modules take MKL's), so with the modules' bits: the Python and torch ops between the
products are gone (`bench/bench_row_ops.py`). `TextDecoder` takes it where it fits.

The C source is compiled on first use with the machine's C compiler (`$CC`, else `cc`;
`-O3 -march=native -fopenmp`) into lalm's cache (`$LALM_CACHE/kernels`, named by a hash of the
source, the flags, the compiler and the CPU's feature flags, written atomically), then loaded
with ctypes; OpenMP threads are torch's own pool (the same libgomp), `torch.get_num_threads()`
of them. Where no compiler works or `LALM_KERNELS=0` is set, `available()` is False and
callers use torch's kernels instead (a warning says why, once): a choice made once per
process, never per call, so it cannot split a batch (`torch_kernels()` lets a benchmark or a
test run torch's inside a block, for the whole model at once).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from lalm.assets import cache_dir

SOURCE = Path(__file__).with_name("linear.c")
#: The compiler flags; `-march` is added by `build` (native by default). No flag changes a
#: result (no -ffast-math); -fno-trapping-math lets the int8 digits' loops vectorize.
CFLAGS = ("-O3", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
          "-std=c11")
#: Set to 0 to use torch's kernels instead of lalm's (e.g. to compare the two in one run).
ENV_SWITCH = "LALM_KERNELS"


class KernelBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded (the message has the compiler's output)."""


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux /proc/cpuinfo), '' where unreadable."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def build(march: str = "native", directory: Path | None = None) -> ctypes.CDLL:
    """Compile (or find compiled) `linear.c` for `-march=<march>` and load it.

    Args:
        march: the `-march` target ("native": this CPU; e.g. "x86-64-v3" builds the AVX2
            path, "x86-64" the portable one, which tests compare).
        directory: where the library is kept; default `cache_dir() / "kernels"`.

    Returns:
        The loaded library, its argument types set.

    Raises:
        KernelBuildError: no compiler, it failed (its output in the message) or timed out, the
            cache folder is not writable, or the library does not load.
    """
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C compiler {compiler!r} on PATH")
    flags = (*CFLAGS, f"-march={march}")
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise KernelBuildError(f"{compiler} --version failed: {e}") from e
    key = hashlib.sha256("\0".join((SOURCE.read_text(), " ".join(flags), version,
                                    platform.machine(), _cpu_flags())).encode()).hexdigest()
    directory = directory or cache_dir() / "kernels"
    target = directory / f"linear-{march}-{key[:16]}.so"
    if not target.exists():
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=directory) as tmp:
                out = Path(tmp) / target.name
                run = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(out), "-lm"],
                                     capture_output=True, text=True, timeout=300)
                if run.returncode:
                    raise KernelBuildError(f"compiling {SOURCE.name} failed:\n"
                                           f"{run.stderr[-2000:]}")
                os.replace(out, target)  # atomic: another process may be reading an old copy
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KernelBuildError(f"building {target}: {e}") from e
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        raise KernelBuildError(f"loading {target}: {e}") from e
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    flag = ctypes.c_int
    lib.lalm_int8_linear.argtypes = [ptr, ptr, ptr, flag, ptr, ptr, flag, i64, i64, i64, flag]
    lib.lalm_int8_linear.restype = ctypes.c_int
    lib.lalm_int8_linear_many.argtypes = [ptr, flag, ptr, ptr, flag, ptr, ptr, flag, i64, ptr,
                                          i64, flag]
    lib.lalm_int8_linear_many.restype = ctypes.c_int
    lib.lalm_bf16_linear.argtypes = [ptr, ptr, ptr, ptr, flag, i64, i64, i64, flag]
    lib.lalm_bf16_linear.restype = ctypes.c_int
    lib.lalm_f32_linear_kn.argtypes = [ptr, ptr, ptr, ptr, flag, i64, i64, i64, flag]
    lib.lalm_f32_linear_kn.restype = ctypes.c_int
    lib.lalm_decode_attention.argtypes = [ptr, ptr, ptr, ptr, ptr, flag, i64, i64, i64, i64,
                                          i64, i64, i64, ctypes.c_float, flag]
    lib.lalm_decode_attention.restype = ctypes.c_int
    lib.lalm_rms_norm.argtypes = [ptr, ptr, ptr, flag, i64, i64, ctypes.c_float, flag]
    lib.lalm_rms_norm.restype = None
    lib.lalm_rope.argtypes = [ptr, ptr, ptr, ptr, flag, *[i64] * 9, flag]
    lib.lalm_rope.restype = None
    lib.lalm_silu_mul.argtypes = [ptr, ptr, ptr, flag, i64, flag]
    lib.lalm_silu_mul.restype = None
    lib.lalm_decode_layers.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, ptr, ptr, i64, i64, i64,
                                       ptr, ptr, i64, flag, flag, flag, *[i64] * 6,
                                       ctypes.c_float, ctypes.c_float, flag]
    lib.lalm_decode_layers.restype = ctypes.c_int
    if lib.lalm_layer_operands() != len(LAYER_OPERANDS):
        raise KernelBuildError(f"{target} takes {lib.lalm_layer_operands()} operands a layer, "
                               f"lalm.kernels names {len(LAYER_OPERANDS)}")
    lib.lalm_kernel_isa.restype = ctypes.c_char_p
    lib.lalm_int8_isa.restype = ctypes.c_char_p
    return lib


@cache
def library() -> ctypes.CDLL | None:
    """This process's kernel library, built on first call; None where `LALM_KERNELS=0` or the
    build failed (with a warning saying why: torch's kernels are used then)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    try:
        return build()
    except KernelBuildError as e:
        warnings.warn(f"lalm's CPU kernels are unavailable ({e}); using torch's", stacklevel=2)
        return None


_TORCH_ONLY: list[bool] = []


@contextmanager
def torch_kernels() -> Iterator[None]:
    """Inside the block `available()` is False: every product takes torch's kernels (so a
    benchmark can compare the two in one run)."""
    _TORCH_ONLY.append(True)
    try:
        yield
    finally:
        _TORCH_ONLY.pop()


def available() -> bool:
    """Whether lalm's kernels run here: built (`library`) and not inside `torch_kernels`."""
    return not _TORCH_ONLY and library() is not None


def _loaded(lib: ctypes.CDLL | None) -> ctypes.CDLL:
    """`lib`, or this process's library; KernelBuildError where there is none."""
    lib = lib or library()
    if lib is None:
        raise KernelBuildError("lalm's CPU kernels are unavailable")
    return lib


def isa(lib: ctypes.CDLL | None = None) -> str:
    """The bf16 product's vector path in a build ("avx512" | "avx2" | "generic"); default
    this process's."""
    lib = _loaded(lib)
    return lib.lalm_kernel_isa().decode()


def int8_isa(lib: ctypes.CDLL | None = None) -> str:
    """The int8 product's path in a build ("avx512-vnni" | "avx-vnni" | "avx2" | "generic");
    default this process's."""
    lib = _loaded(lib)
    return lib.lalm_int8_isa().decode()


#: The activation dtypes the kernels read and write as they are (others go through float32).
_NATIVE = (torch.float32, torch.bfloat16)


def _rows(x: Tensor, in_features: int) -> Tensor:
    """x [..., in] float -> contiguous [M, in], float32 or bf16 as it is (other float dtypes
    widened to float32)."""
    if x.device.type != "cpu" or not x.is_floating_point():
        raise ValueError(f"lalm's kernels take CPU float activations, got {x.dtype} on "
                         f"{x.device}")
    if x.shape[-1] != in_features:
        raise ValueError(f"activations end in {x.shape[-1]}, the weight takes {in_features}")
    rows = x.reshape(math.prod(x.shape[:-1]), in_features)
    return (rows if rows.dtype in _NATIVE else rows.to(torch.float32)).contiguous()


def _bias(bias: Tensor | None, dtype: torch.dtype, n: int) -> Tensor | None:
    """The bias [n] in the output's dtype (contiguous), or None."""
    if bias is None:
        return None
    if bias.shape != (n,) or bias.device.type != "cpu":
        raise ValueError(f"the bias must be a CPU tensor [{n}], got {tuple(bias.shape)} on "
                         f"{bias.device}")
    return bias.to(dtype).contiguous()


def _call(kernel: Callable[..., int], x: Tensor, rows: Tensor, n: int, bias: Tensor | None,
          *weights: object) -> Tensor:
    """Run a product kernel on `rows` ([M, K], `_rows`) into y [..., n] in x's dtype, bias
    added; float dtypes the kernels do not take are computed in float32 and converted."""
    y = torch.empty(rows.shape[0], n, dtype=rows.dtype)
    if not rows.numel() or not n:  # nothing to multiply (the kernels' buffers would be empty)
        y = y.zero_().view(*x.shape[:-1], n).to(x.dtype)
        return y if bias is None else y + _bias(bias, x.dtype, n)
    native_bias = _bias(bias, rows.dtype, n) if rows.dtype == x.dtype else None
    if kernel(rows.data_ptr(), *weights,
              None if native_bias is None else native_bias.data_ptr(), y.data_ptr(),
              rows.dtype == torch.bfloat16, rows.shape[0], n, rows.shape[1],
              torch.get_num_threads()):
        raise MemoryError(f"lalm's kernel: no memory for the buffers of {rows.shape[0]} rows "
                          f"of {rows.shape[1]}")
    y = y.view(*x.shape[:-1], n)
    if rows.dtype != x.dtype:  # e.g. float16: the product in float32, rounded once
        y = y.to(x.dtype)
        if bias is not None:
            y = y + _bias(bias, x.dtype, n)
    return y


def _check_weight(weight: Tensor, dtype: torch.dtype) -> None:
    if weight.device.type != "cpu" or weight.dtype != dtype or weight.ndim != 2 \
            or not weight.is_contiguous():
        raise ValueError(f"the weight must be a contiguous 2-D {dtype} CPU tensor, got "
                         f"{weight.dtype} {tuple(weight.shape)} on {weight.device}"
                         f"{'' if weight.is_contiguous() else ' (not contiguous)'}")


#: The longest int8 row (K) whose integer sums `linear.c` keeps exact (int32 lanes).
INT8_MAX_K = 1 << 19


def _check_int8(q: Tensor, scales: Tensor, in_features: int) -> None:
    """q [N, K] int8 contiguous on the CPU, scales [N], K <= INT8_MAX_K and K the
    activations' width `in_features` (ValueError if not)."""
    _check_weight(q, torch.int8)
    n, k = q.shape
    if scales.shape != (n,):
        raise ValueError(f"scales must be [{n}], got {tuple(scales.shape)}")
    if k > INT8_MAX_K:
        raise ValueError(f"int8 rows of {k} columns: lalm's kernel keeps sums exact up to "
                         f"{INT8_MAX_K}")
    if k != in_features:
        raise ValueError(f"activations end in {in_features}, the weight takes {k}")


def int8_linear(x: Tensor, q: Tensor, scales: Tensor, bias: Tensor | None = None, *,
                lib: ctypes.CDLL | None = None) -> Tensor:
    """x (q * scales[:, None])^T + bias with the int8 codes read as they are.

    Each row of x is rounded to the fixed-point grid max|x_i| / (127 * 254^2) (at most half a
    step off: about the float32 rounding of its largest element); the products are then
    exact, rounded once to float32, then to x's dtype with the bias added as
    `product.to(x.dtype) + bias.to(x.dtype)` rounds. A row that is not finite gives NaN.

    Args:
        x: [..., K] float activations (float32 and bf16 read as they are; others widened).
        q: [N, K] int8 codes, contiguous; K <= `INT8_MAX_K`.
        scales: [N] float, one per output row (float32 and bf16 read as they are).
        bias: [N] or None.
        lib: a library from `build` (default this process's).

    Returns:
        [..., N] in x's dtype.

    Raises:
        ValueError: tensors off the CPU, of other dtypes or shapes; K over `INT8_MAX_K`.
        MemoryError: the kernel's buffers could not be allocated.
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    _check_int8(q, scales, x.shape[-1])
    n, k = q.shape
    scales = scales if scales.dtype in _NATIVE else scales.to(torch.float32)
    scales = scales.contiguous()
    return _call(lib.lalm_int8_linear, x, _rows(x, k), n, bias, q.data_ptr(),
                 scales.data_ptr(), scales.dtype == torch.bfloat16)


#: The most products `int8_linear_many` takes at once (`linear.c`).
MAX_MANY = 8


def int8_linear_many(x: Tensor, weights: Sequence[tuple[Tensor, Tensor, Tensor | None]], *,
                     lib: ctypes.CDLL | None = None) -> list[Tensor]:
    """`int8_linear(x, q, scales, bias)` for each (q, scales, bias) of `weights`, in one pass:
    x's digits made once and the rows of every weight shared among the threads at once (one
    parallel loop, one barrier), each output bit for bit what `int8_linear` gives.

    Args:
        x: [..., K] float activations.
        weights: 1 to `MAX_MANY` (q [N_p, K] int8, scales [N_p], bias [N_p] or None); the
            scales all of one dtype.
        lib: a library from `build` (default this process's).

    Returns:
        One [..., N_p] tensor per weight, in x's dtype.

    Raises:
        ValueError: as `int8_linear`; no weights, too many, or scales of mixed dtypes.
        MemoryError: the kernel's buffers could not be allocated.
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    if not 1 <= len(weights) <= MAX_MANY:
        raise ValueError(f"int8_linear_many takes 1 to {MAX_MANY} weights, got {len(weights)}")
    k = x.shape[-1]
    rows = _rows(x, k)
    if rows.dtype != x.dtype or not rows.numel():  # through float32, or nothing to multiply
        return [int8_linear(x, q, scales, bias, lib=lib) for q, scales, bias in weights]
    codes, scale_list, biases = [], [], []
    for q, scales, bias in weights:
        _check_int8(q, scales, k)
        codes.append(q)
        scale_list.append(scales if scales.dtype in _NATIVE else scales.to(torch.float32))
        biases.append(_bias(bias, rows.dtype, q.shape[0]))
    if len({s.dtype for s in scale_list}) != 1:
        raise ValueError(f"int8_linear_many: scales of one dtype, got "
                         f"{sorted(str(s.dtype) for s in scale_list)}")
    scale_list = [s.contiguous() for s in scale_list]
    outs = [torch.empty(rows.shape[0], q.shape[0], dtype=rows.dtype) for q in codes]

    def pointers(tensors: Sequence[Tensor | None]) -> ctypes.Array:
        return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr()
                                                  for t in tensors))

    widths = (ctypes.c_int64 * len(codes))(*(q.shape[0] for q in codes))
    if lib.lalm_int8_linear_many(rows.data_ptr(), len(codes), pointers(codes),
                                 pointers(scale_list), scale_list[0].dtype == torch.bfloat16,
                                 pointers(biases), pointers(outs), rows.dtype == torch.bfloat16,
                                 rows.shape[0], widths, k, torch.get_num_threads()):
        raise MemoryError(f"lalm's int8 kernel: no memory for the buffers of {rows.shape[0]} "
                          f"rows of {k}")
    return [y.view(*x.shape[:-1], y.shape[1]) for y in outs]


def bf16_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                lib: ctypes.CDLL | None = None) -> Tensor:
    """x weight^T + bias with the bf16 weight read as it is, summed in float32, then in x's
    dtype with the bias added as `product.to(x.dtype) + bias.to(x.dtype)` rounds.

    Args:
        x: [..., K] float activations (float32 and bf16 read as they are; others widened).
        weight: [N, K] bf16, contiguous.
        bias: [N] or None.
        lib: a library from `build` (default this process's).

    Returns:
        [..., N] in x's dtype.

    Raises:
        ValueError: tensors off the CPU, of other dtypes or shapes.
        MemoryError: the kernel's buffers could not be allocated.
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    _check_weight(weight, torch.bfloat16)
    n, k = weight.shape
    return _call(lib.lalm_bf16_linear, x, _rows(x, k), n, bias, weight.data_ptr())


def f32_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
               lib: ctypes.CDLL | None = None) -> Tensor:
    """x weight^T + bias for a float32 weight in the decode layout (`TextDecoder.
    use_decode_layout`: [N, K] at strides (1, N), i.e. [K, N] rows), read once as it streams:
    each output is one chain of fused multiply-adds in k order (its bits do not depend on the
    rows, the threads or the vector path; against MKL's they differ by summation order).

    Args:
        x: [..., K] float activations (float32 and bf16 read as they are; others widened).
        weight: [N, K] float32 at strides (1, N).
        bias: [N] or None.
        lib: a library from `build` (default this process's).

    Returns:
        [..., N] in x's dtype.

    Raises:
        ValueError: tensors off the CPU, of other dtypes, shapes or layouts.
        MemoryError: the kernel's buffers could not be allocated.
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    if weight.ndim != 2 or not _decode_layout(weight):
        raise ValueError(f"f32_linear takes a float32 CPU weight [N, K] at strides (1, N), got "
                         f"{weight.dtype} {tuple(weight.shape)} strides {weight.stride()} on "
                         f"{weight.device}")
    n, k = weight.shape
    return _call(lib.lalm_f32_linear_kn, x, _rows(x, k), n, bias, weight.data_ptr())


def _decode_layout(weight: Tensor) -> bool:
    """Whether a 2-D weight is float32 on the CPU at strides (1, N) (`f32_linear`; an empty
    one has no layout to keep)."""
    return (weight.dtype == torch.float32 and weight.device.type == "cpu"
            and (weight.stride() == (1, weight.shape[0]) or not weight.numel()))


def _operands_fit(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> bool:
    """`attends` but for the kernels' availability."""
    if q.ndim != 4:
        return False
    batch, heads, seq, width = q.shape
    return (seq == 1 and width % 16 == 0 and q.device.type == "cpu" and q.dtype in _NATIVE
            and k.dtype == v.dtype == q.dtype and k.device.type == v.device.type == "cpu"
            and k.ndim == 4 and k.shape == v.shape and k.stride() == v.stride()
            and k.shape[0] == batch and heads % k.shape[1] == 0 and k.shape[3] == width
            and k.stride(3) == 1 and k.stride(2) == width
            and mask.dtype == torch.bool and mask.shape == (batch, 1, 1, k.shape[2])
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad
                                                  or v.requires_grad)))


def attends(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> bool:
    """Whether `decode_attention` takes these operands: lalm's kernels `available()`, q
    [B, H, 1, D] (one new query per row), CPU float32 or bf16 tensors of one dtype, no
    gradient wanted, D a multiple of 16, k and v [B, H_kv, T, D] of one layout whose rows of
    D are contiguous (a `KVCache` window), and a bool mask [B, 1, 1, T]. In practice a choice
    per model and machine: every decode step of a model answers the same."""
    return _operands_fit(q, k, v, mask) and available()  # a GPU step builds nothing


def decode_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, *,
                     lib: ctypes.CDLL | None = None) -> Tensor:
    """Scaled dot-product attention of one new query per row over its cached keys and values
    (a decode step), the cache read once as it streams.

    Each row's keys are taken in order, masked keys skipped, so a row gets the same bits
    whatever the batch, the window's length past its last key or the threads; scores, softmax
    and the weighted sum in float32 (bf16 operands widened, the output rounded once). Equal to
    `F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)` up to float32
    rounding; a row whose mask allows no key gets zeros (torch: NaN).

    Args:
        q: [B, H, 1, D] queries (`attends` says which operands it takes).
        k, v: [B, H_kv, T, D] keys and values (H % H_kv == 0: head h reads h // (H / H_kv)).
        mask: [B, 1, 1, T] bool, True = attend.
        lib: a library from `build` (default this process's).

    Returns:
        [B, H, 1, D] in q's dtype.

    Raises:
        ValueError: operands `attends` refuses (kernels aside).
        MemoryError: the kernel's buffers could not be allocated.
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    if not _operands_fit(q, k, v, mask):
        raise ValueError(f"decode_attention takes one CPU float32/bf16 query per row over a "
                         f"KVCache window and a bool mask [B, 1, 1, T], got q "
                         f"{tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype} strides "
                         f"{k.stride()}, mask {tuple(mask.shape)} {mask.dtype}")
    batch, heads, _, width = q.shape
    keys = k.shape[2]
    queries, allowed = q.contiguous(), mask.reshape(batch, keys).contiguous()
    out = torch.empty(batch, heads, width, dtype=q.dtype)
    if lib.lalm_decode_attention(queries.data_ptr(), k.data_ptr(), v.data_ptr(),
                                 allowed.data_ptr(), out.data_ptr(), q.dtype == torch.bfloat16,
                                 batch, heads, k.shape[1], keys, width, k.stride(0),
                                 k.stride(1), width ** -0.5, torch.get_num_threads()):
        raise MemoryError(f"lalm's attention kernel: no memory for {batch * heads} rows of "
                          f"{keys} scores")
    return out.view(batch, heads, 1, width)


def _wants_grad(*tensors: Tensor) -> bool:
    """Whether autograd would record an op on `tensors` (the kernels have no backward)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _norm_fits(x: Tensor, weight: Tensor) -> bool:
    """`normalizes` but for the kernels' availability."""
    return (x.ndim >= 1 and x.device.type == weight.device.type == "cpu"
            and x.dtype in _NATIVE and weight.dtype == x.dtype
            and weight.shape == (x.shape[-1],) and not _wants_grad(x, weight))


def normalizes(x: Tensor, weight: Tensor) -> bool:
    """Whether `rms_norm` takes these operands: lalm's kernels `available()`, x [..., D] and
    weight [D] CPU tensors of one dtype, float32 or bf16, and no gradient wanted (a model's
    forward in inference; a training forward keeps torch's formula). The operands are checked
    first, so a GPU or training forward never builds the kernels."""
    return _norm_fits(x, weight) and available()


def rms_norm(x: Tensor, weight: Tensor, eps: float, *, lib: ctypes.CDLL | None = None
             ) -> Tensor:
    """RMSNorm of each row in one pass: weight * (x * rsqrt(mean(x^2) + eps)), the normed
    row rounded to x's dtype before the weight (`lalm.model.layers.RMSNorm`'s formula).

    The mean of the squares is summed in float64 in a fixed order, so a row gets the same
    bits whatever the other rows or the threads; against torch's float32 mean the result
    may differ in the last bit (a relative 1e-7 in float32).

    Args:
        x: [..., D] float32 or bf16 (`normalizes` says which operands it takes).
        weight: [D], x's dtype.
        eps: added to the mean of the squares.
        lib: a library from `build` (default this process's).

    Returns:
        [..., D] in x's dtype, contiguous.

    Raises:
        ValueError: operands `normalizes` refuses (kernels aside).
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    if not _norm_fits(x, weight):
        raise ValueError(f"rms_norm takes CPU float32/bf16 rows [..., D] and a weight [D] of "
                         f"their dtype, no gradient; got x {tuple(x.shape)} {x.dtype} on "
                         f"{x.device}, weight {tuple(weight.shape)} {weight.dtype}")
    rows, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(rows)
    width = x.shape[-1]
    lib.lalm_rms_norm(rows.data_ptr(), weight.data_ptr(), y.data_ptr(),
                      x.dtype == torch.bfloat16, rows.numel() // max(width, 1), width, eps,
                      torch.get_num_threads())
    return y


def _rope_fits(x: Tensor, cos: Tensor, sin: Tensor) -> bool:
    """`rotates` but for the kernels' availability."""
    if x.ndim != 4:
        return False
    batch, _, seq, width = x.shape
    return (x.device.type == cos.device.type == sin.device.type == "cpu"
            and x.dtype in _NATIVE and cos.dtype == sin.dtype == x.dtype and width % 2 == 0
            and cos.shape == sin.shape == (batch, 1, seq, width)
            and cos.stride() == sin.stride() and cos.stride(3) == 1 and x.stride(3) == 1
            and not _wants_grad(x, cos, sin))


def rotates(x: Tensor, cos: Tensor, sin: Tensor) -> bool:
    """Whether `rope` takes these operands: lalm's kernels `available()`, x [B, H, S, D]
    with its rows of D contiguous (e.g. the heads of a projection, transposed), cos and sin
    [B, 1, S, D] of x's dtype (float32 or bf16) with rows of D contiguous, CPU tensors, no
    gradient wanted (checked before the kernels are built, as `normalizes`)."""
    return _rope_fits(x, cos, sin) and available()


def rope(x: Tensor, cos: Tensor, sin: Tensor, *, lib: ctypes.CDLL | None = None) -> Tensor:
    """Rotate-half RoPE in one pass: x * cos + [-x[..., D/2:], x[..., :D/2]] * sin, with the
    bits of those torch ops (`lalm.model.layers.apply_rope`: each product and the sum
    rounded to x's dtype in turn).

    Args:
        x: [B, H, S, D] (`rotates` says which operands it takes).
        cos, sin: [B, 1, S, D] RoPE tables in x's dtype.
        lib: a library from `build` (default this process's).

    Returns:
        [B, H, S, D] in x's dtype, contiguous.

    Raises:
        ValueError: operands `rotates` refuses (kernels aside).
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    if not _rope_fits(x, cos, sin):
        raise ValueError(f"rope takes CPU float32/bf16 x [B, H, S, D] (rows of D contiguous, "
                         f"D even) and cos/sin [B, 1, S, D] of its dtype, no gradient; got x "
                         f"{tuple(x.shape)} {x.dtype} strides {x.stride()}, cos "
                         f"{tuple(cos.shape)} {cos.dtype} strides {cos.stride()}")
    batch, heads, seq, width = x.shape
    y = torch.empty(batch, heads, seq, width, dtype=x.dtype)
    lib.lalm_rope(x.data_ptr(), cos.data_ptr(), sin.data_ptr(), y.data_ptr(),
                  x.dtype == torch.bfloat16, batch, heads, seq, width, x.stride(0),
                  x.stride(1), x.stride(2), cos.stride(0), cos.stride(2),
                  torch.get_num_threads())
    return y


def _activation_fits(gate: Tensor, up: Tensor) -> bool:
    """`activates` but for the kernels' availability."""
    return (gate.device.type == up.device.type == "cpu" and gate.dtype in _NATIVE
            and up.dtype == gate.dtype and up.shape == gate.shape
            and not _wants_grad(gate, up))


def activates(gate: Tensor, up: Tensor) -> bool:
    """Whether `silu_mul` takes these operands: lalm's kernels `available()`, gate and up CPU
    tensors of one shape and dtype, float32 or bf16, no gradient wanted (checked before the
    kernels are built, as `normalizes`)."""
    return _activation_fits(gate, up) and available()


def silu_mul(gate: Tensor, up: Tensor, *, lib: ctypes.CDLL | None = None) -> Tensor:
    """SwiGLU's activation `F.silu(gate) * up` in one pass (bf16: silu rounded to bf16, then
    the product, as those two ops round).

    silu's exponential is lalm's own (`linear.c`: a polynomial, within a few ulp of the exact
    silu; torch's differs in the last bits), the same on every vector path, and each element
    is computed alone: an element's bits never depend on the other rows or the threads.

    Args:
        gate, up: [...] float32 or bf16 of one shape (`activates` says which it takes).
        lib: a library from `build` (default this process's).

    Returns:
        [...] in gate's dtype, contiguous.

    Raises:
        ValueError: operands `activates` refuses (kernels aside).
        KernelBuildError: no kernels in this process.
    """
    lib = _loaded(lib)
    if not _activation_fits(gate, up):
        raise ValueError(f"silu_mul takes CPU float32/bf16 gate and up of one shape and dtype, "
                         f"no gradient; got {tuple(gate.shape)} {gate.dtype} on {gate.device} "
                         f"and {tuple(up.shape)} {up.dtype} on {up.device}")
    gate, up = gate.contiguous(), up.contiguous()
    y = torch.empty_like(gate)
    lib.lalm_silu_mul(gate.data_ptr(), up.data_ptr(), y.data_ptr(), gate.dtype == torch.bfloat16,
                      gate.numel(), torch.get_num_threads())
    return y


#: A layer's operands for `DecodeLayers`, in `linear.c`'s order (its `OP_*`).
LAYER_OPERANDS = ("attn_norm", "q", "q_scales", "q_bias", "k", "k_scales", "k_bias", "v",
                  "v_scales", "v_bias", "q_norm", "k_norm", "o", "o_scales", "mlp_norm",
                  "gate", "gate_scales", "up", "up_scales", "down", "down_scales")
#: The operands a layer may leave out (None): the q/k/v biases, the q/k norms (both or none);
#: the scales are None for bf16 and float32 weights.
OPTIONAL_OPERANDS = frozenset({"q_bias", "k_bias", "v_bias", "q_norm", "k_norm"})


#: The weight formats of `DecodeLayers` by the weights' dtype (`linear.c`'s FORMAT_*): int8
#: codes [N, K] with scales, bf16 [N, K] (contiguous), float32 [N, K] at strides (1, N).
_FORMATS = {torch.int8: 0, torch.bfloat16: 1, torch.float32: 2}


def _weight_problem(name: str, weight: Tensor, scales: Tensor | None, fmt: torch.dtype,
                    scale_dtype: torch.dtype | None, shape: tuple[int, int]) -> str | None:
    """What `DecodeLayers` cannot take in one product's weight (and scales), or None."""
    if weight.dtype != fmt or weight.shape != shape or weight.device.type != "cpu":
        return f"{name}: {weight.dtype} {tuple(weight.shape)}, not {fmt} {shape}"
    if fmt == torch.float32:
        if not _decode_layout(weight):
            return f"{name}: strides {weight.stride()}, not the decode layout (1, {shape[0]})"
    elif not weight.is_contiguous() or shape[1] > INT8_MAX_K:
        return f"{name}: not contiguous, or rows over {INT8_MAX_K}"
    if fmt != torch.int8:
        return None if scales is None else f"{name}_scales given for {fmt} weights"
    if (scales is None or scales.dtype != scale_dtype or scales.shape != (shape[0],)
            or not scales.is_contiguous() or scales.device.type != "cpu"):
        return f"{name}_scales: not a contiguous {scale_dtype} [{shape[0]}]"
    return None


def _layer_problem(layer: dict[str, Tensor | None], dtype: torch.dtype, fmt: torch.dtype,
                   scale_dtype: torch.dtype | None, dim: int, heads: int, kv_heads: int,
                   width: int, hidden: int) -> str | None:
    """What in one layer's operands `DecodeLayers` cannot take, or None."""
    if set(layer) != set(LAYER_OPERANDS):
        return f"operands {sorted(layer)}, not {sorted(LAYER_OPERANDS)}"
    if (layer["q_norm"] is None) != (layer["k_norm"] is None):
        return "a q norm without a k norm (or the reverse)"
    biases = [layer[name] is None for name in ("q_bias", "k_bias", "v_bias")]
    if len(set(biases)) != 1:
        return "some of the q/k/v products have a bias and some not"
    products = {"q": (heads * width, dim), "k": (kv_heads * width, dim),
                "v": (kv_heads * width, dim), "o": (dim, heads * width), "gate": (hidden, dim),
                "up": (hidden, dim), "down": (dim, hidden)}
    vectors = {"attn_norm": dim, "mlp_norm": dim, "q_norm": width, "k_norm": width,
               "q_bias": heads * width, "k_bias": kv_heads * width, "v_bias": kv_heads * width}
    for name, shape in products.items():
        weight = layer[name]
        if weight is None:
            return f"no {name} weight"
        problem = _weight_problem(name, weight, layer[f"{name}_scales"], fmt, scale_dtype, shape)
        if problem:
            return problem
    for name, n in vectors.items():
        vector = layer[name]
        if vector is None and name in OPTIONAL_OPERANDS:
            continue
        if (vector is None or vector.dtype != dtype or vector.shape != (n,)
                or not vector.is_contiguous() or vector.device.type != "cpu"):
            return f"{name}: not a contiguous {dtype} [{n}]"
    return None


def layers_problem(layers: Sequence[dict[str, Tensor | None]], dtype: torch.dtype, *,
                   heads: int, kv_heads: int, head_dim: int) -> str | None:
    """What `DecodeLayers` cannot take in these layers' operands (its arguments), or None."""
    if dtype not in _NATIVE:
        return f"{dtype} activations, not float32 or bf16"
    if not layers:
        return "no layers"
    if kv_heads < 1 or heads % kv_heads or head_dim % 16:
        return f"{heads} heads over {kv_heads} key/value heads of {head_dim}"
    first = layers[0]
    fmt = getattr(first.get("q"), "dtype", None)
    if fmt not in _FORMATS:
        return f"weights of {fmt}, not int8, bf16 or float32"
    scale_dtype = getattr(first.get("q_scales"), "dtype", None)
    if fmt == torch.int8 and scale_dtype not in _NATIVE:
        return f"int8 scales of {scale_dtype}"
    dim = getattr(first.get("attn_norm"), "shape", (0,))[0]
    hidden = getattr(first.get("gate"), "shape", (0,))[0]
    for index, layer in enumerate(layers):
        problem = _layer_problem(layer, dtype, fmt, scale_dtype, dim, heads, kv_heads, head_dim,
                                 hidden)
        if problem:
            return f"layer {index}: {problem}"
    return None


class DecodeLayers:
    """A decode step's pre-norm decoder layers (`lalm.model.decoder.DecoderLayer`) for one
    call of lalm's kernels a step (`lalm_decode_layers`): each layer's RMSNorm, q/k/v products,
    q/k norms, RoPE, logn factor, KV cache write, attention, o product, residual add, RMSNorm,
    gate/up products, `silu_mul`, down product and residual add, each by the kernel the modules
    call in inference (int8: q/k/v and gate/up in one pass each), so the result has their
    bits; float32 weights take `f32_linear` where the modules take MKL's product (the same
    sums in another order). The operands are checked once, here; a call checks the step's.

    Args:
        layers: per layer, its operands by the names of `LAYER_OPERANDS`: the products'
            weights all of one format (int8 codes [N, K] contiguous with scales [N] of one
            float32/bf16 dtype; bf16 [N, K] contiguous; float32 [N, K] at strides (1, N);
            no scales, None, but int8's), norm weights and biases in `dtype`;
            `OPTIONAL_OPERANDS` may be None. They must stay alive and in place while this is
            used (`lalm.model.decoder` checks that before each step).
        dtype: the activations' dtype, float32 or bf16.
        heads, kv_heads, head_dim: query heads, key/value heads (dividing them), their width
            (a multiple of 16).
        eps: every RMSNorm's epsilon.

    Raises:
        ValueError: what `layers_problem` finds.
    """

    def __init__(self, layers: Sequence[dict[str, Tensor | None]], dtype: torch.dtype, *,
                 heads: int, kv_heads: int, head_dim: int, eps: float) -> None:
        problem = layers_problem(layers, dtype, heads=heads, kv_heads=kv_heads,
                                 head_dim=head_dim)
        if problem:
            raise ValueError(f"DecodeLayers: {problem}")
        first = layers[0]
        self.dtype, self.heads, self.kv_heads, self.head_dim = dtype, heads, kv_heads, head_dim
        self.eps, self.n_layer = eps, len(layers)
        self.dim = first["attn_norm"].shape[0]  # type: ignore[union-attr]
        self.hidden = first["gate"].shape[0]  # type: ignore[union-attr]
        self.format = _FORMATS[first["q"].dtype]  # type: ignore[union-attr]
        self.bf16_scales = getattr(first["q_scales"], "dtype", None) == torch.bfloat16
        self.pointers = tuple(None if layer[name] is None
                              else layer[name].data_ptr()  # type: ignore[union-attr]
                              for layer in layers for name in LAYER_OPERANDS)

    def step_problem(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, keys: Tensor,
                     values: Tensor, columns: Sequence[int], q_scale: Tensor | None = None
                     ) -> str | None:
        """What a call cannot take in these step operands (its arguments), or None."""
        if (x.ndim != 3 or x.shape[1:] != (1, self.dim) or x.dtype != self.dtype
                or x.device.type != "cpu"):
            return (f"x {tuple(x.shape)} {x.dtype} on {x.device}, not CPU {self.dtype} "
                    f"[B, 1, {self.dim}]")
        batch = x.shape[0]
        if keys.ndim != 5 or keys.shape != values.shape or keys.stride() != values.stride():
            return (f"keys {tuple(keys.shape)} and values {tuple(values.shape)}, not "
                    f"[n_layer, B, H_kv, max_seq_len, hd] of one layout")
        strides = keys.stride()
        if (keys.shape[:3] != (self.n_layer, batch, self.kv_heads) or strides[4] != 1
                or keys.shape[4] != self.head_dim or strides[3] != self.head_dim):
            return (f"a KV cache {tuple(keys.shape)} strides {strides} for {batch} rows of "
                    f"{self.n_layer} layers, {self.kv_heads} heads of {self.head_dim}")
        if keys.dtype != x.dtype or values.dtype != x.dtype or keys.device.type != "cpu":
            return f"a {keys.dtype} cache for {x.dtype} activations"
        seen = mask.shape[-1] if mask.ndim == 4 else -1
        if mask.dtype != torch.bool or mask.shape != (batch, 1, 1, seen) \
                or seen > keys.shape[3]:
            return f"a mask {tuple(mask.shape)} {mask.dtype}"
        if len(columns) != batch or any(not 0 <= c < seen for c in columns):
            return f"columns {list(columns)} for {batch} rows of {seen} keys"
        for name, table in (("cos", cos), ("sin", sin)):
            if table.shape != (batch, 1, 1, self.head_dim) or table.dtype != x.dtype \
                    or table.device.type != "cpu":
                return f"{name} {tuple(table.shape)} {table.dtype}"
        if q_scale is not None and q_scale.shape != (batch, 1, 1, 1):
            return f"q_scale {tuple(q_scale.shape)}"
        if torch.is_grad_enabled():  # the operands may want gradients: no graph is recorded
            return "gradients enabled (no_grad or inference_mode wanted)"
        return None

    def fits(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, keys: Tensor,
             values: Tensor, columns: Sequence[int], q_scale: Tensor | None = None) -> bool:
        """Whether a call takes these step operands: no `step_problem` and lalm's kernels
        `available()`. In practice a choice per model and machine, as `attends`."""
        return self.step_problem(x, cos, sin, mask, keys, values, columns,
                                 q_scale) is None and available()

    def __call__(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, keys: Tensor,
                 values: Tensor, columns: Sequence[int], q_scale: Tensor | None = None, *,
                 lib: ctypes.CDLL | None = None) -> Tensor:
        """Run the layers over one new position per row, writing each row's key and value
        into every layer's cache.

        Args:
            x: [B, 1, D] the layers' input, in `dtype`.
            cos, sin: [B, 1, 1, hd] the step's RoPE tables, in `dtype`.
            mask: [B, 1, 1, T] bool, the keys each row attends to (its new one included).
            keys, values: [n_layer, B, H_kv, max_seq_len, hd] the KV cache's window (`dtype`,
                rows of hd contiguous, one layout); row b's new key and value go to column
                `columns[b]` (< T <= max_seq_len) of every layer.
            columns: [B] the column each row writes.
            q_scale: [B, 1, 1, 1] float32 logn factors, or None.
            lib: a library from `build` (default this process's).

        Returns:
            [B, 1, D] the last layer's output, in `dtype`.

        Raises:
            ValueError: what `step_problem` finds.
            MemoryError: the kernels' buffers could not be allocated.
            KernelBuildError: no kernels in this process.
        """
        lib = _loaded(lib)
        problem = self.step_problem(x, cos, sin, mask, keys, values, columns, q_scale)
        if problem:
            raise ValueError(f"DecodeLayers: {problem}")
        batch, seen, strides = x.shape[0], mask.shape[-1], keys.stride()
        out = x.contiguous().clone().view(batch, self.dim)
        cos, sin = cos.contiguous(), sin.contiguous()
        allowed = mask.reshape(batch, seen).contiguous()
        factors = None if q_scale is None else (
            q_scale.to(x.dtype).float().reshape(batch).contiguous())
        if lib.lalm_decode_layers(
                out.data_ptr(), (ctypes.c_void_p * len(self.pointers))(*self.pointers),
                self.n_layer, cos.data_ptr(), sin.data_ptr(),
                None if factors is None else factors.data_ptr(), keys.data_ptr(),
                values.data_ptr(), strides[0], strides[1], strides[2],
                (ctypes.c_int64 * batch)(*columns), allowed.data_ptr(), seen,
                x.dtype == torch.bfloat16, self.format, self.bf16_scales, batch, self.dim,
                self.heads, self.kv_heads, self.head_dim, self.hidden, self.eps,
                self.head_dim ** -0.5, torch.get_num_threads()):
            raise MemoryError(f"lalm's decode_layers: no memory for the buffers of {batch} "
                              f"rows")
        return out.view(batch, 1, self.dim)
