"""lalm's CPU kernels (`lalm.kernels`): each product (int8, bf16, float32 in the decode
layout) against a float64 reference (int8 within its fixed-point rounding bound), rows that do
not depend on the other rows or the thread count, the AVX2 and portable builds (bf16 and f32
equal bit for bit: same lanes, same order; int8 equal to the native build too: exact sums),
the build cache, the switches and the errors; the layers
that use them (`Int8Linear`, `StreamLinear`) against torch's own kernels; and the decode
step's attention (`decode_attention`) against torch's, alone and in a decoder."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from lalm import kernels
from lalm.config import DecoderConfig
from lalm.model.decoder import TextDecoder
from lalm.model.layers import RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq
from lalm.model.quant import Int8Linear
from lalm.model.upcast import StreamLinear, UpcastLinear

pytestmark = pytest.mark.skipif(not kernels.available(),
                                reason="lalm's kernels did not build here (no C compiler)")

X86 = platform.machine() in ("x86_64", "AMD64")


def _int8(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g),
            torch.rand(n, generator=g) * 0.01 + 1e-3)


def _reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.double() @ weight.double().t()


def _decode_layout(n: int, k: int, seed: int = 2) -> torch.Tensor:
    """A float32 weight [n, k] at strides (1, n), as `TextDecoder.use_decode_layout` keeps
    one (`kernels.f32_linear`)."""
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed)).t()


@pytest.mark.parametrize("n,k", [(64, 64), (37, 77), (130, 16), (9, 1), (70, 4096)])
def test_int8_bf16_and_f32_products_equal_a_float64_reference(n, k) -> None:
    q, scales = _int8(n, k)
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(1))
    ref = _reference(x, q.double() * scales.double()[:, None])
    y = kernels.int8_linear(x, q, scales)
    assert y.dtype == torch.float32 and y.shape == (5, n)
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(2)).bfloat16()
    ref = _reference(x, w)
    y = kernels.bf16_linear(x, w)
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # bf16 activations widen exactly: the same as passing their float32 values, the output
    # then rounded to bf16
    assert torch.equal(kernels.bf16_linear(x.bfloat16(), w), kernels.bf16_linear(
        x.bfloat16().float(), w).bfloat16())
    w32 = _decode_layout(n, k)
    ref = _reference(x, w32)
    y = kernels.f32_linear(x, w32)
    assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["int8", "bf16", "f32"])
def test_outputs_and_bias_are_rounded_as_torch_rounds_them(kind, dtype) -> None:
    """In x's dtype, `product.to(dtype) + bias.to(dtype)`, bit for bit (fp16 through float32)."""
    q, scales = _int8(70, 203)
    w = torch.randn(70, 203).bfloat16()
    w32 = _decode_layout(70, 203)
    bias = torch.randn(70).bfloat16()
    x = torch.randn(3, 5, 203).to(dtype)

    def product(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if kind == "f32":
            return kernels.f32_linear(x, w32, bias)
        return kernels.int8_linear(x, q, scales.bfloat16(), bias) if kind == "int8" else \
            kernels.bf16_linear(x, w, bias)

    y = product(x, bias)
    assert y.dtype == dtype and y.shape == (3, 5, 70)
    float32 = product(x.float())  # the products alone, in float32
    assert torch.equal(product(x), float32.to(dtype))
    assert torch.equal(y, float32.to(dtype) + bias.to(dtype))


def test_leading_dims_are_kept() -> None:
    q, scales = _int8(24, 32)
    x = torch.randn(2, 3, 32)
    y = kernels.int8_linear(x, q, scales)
    assert y.shape == (2, 3, 24)
    assert torch.equal(y[1, 2], kernels.int8_linear(x[1, 2], q, scales))


@pytest.mark.parametrize("kind", ["int8", "bf16", "f32"])
def test_a_row_gives_the_same_bits_alone_among_others_and_at_any_thread_count(kind) -> None:
    n, k = 200, 4096 + 5  # a tail of 5 columns, and rows in blocks of 4 and 8 plus leftovers
    q, scales = _int8(n, k)
    w = torch.randn(n, k).bfloat16()
    w32 = _decode_layout(n + 3, k)  # f32: column slices of whole vectors plus a tail

    def product(x: torch.Tensor) -> torch.Tensor:
        if kind == "f32":
            return kernels.f32_linear(x, w32)
        return kernels.int8_linear(x, q, scales) if kind == "int8" else \
            kernels.bf16_linear(x, w)

    x = torch.randn(16, k, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    try:
        results = {}
        for count in (1, 2):
            torch.set_num_threads(count)
            results[count] = product(x)
            for rows in (1, 3, 7):
                for start in range(0, 16 - rows + 1, rows):
                    assert torch.equal(product(x[start:start + rows]),
                                       results[count][start:start + rows])
        assert torch.equal(results[1], results[2])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not X86, reason="the AVX2 and portable builds are x86-64 targets")
def test_the_avx2_and_portable_builds_agree_bit_for_bit(tmp_path) -> None:
    avx2, generic = kernels.build("x86-64-v3", tmp_path), kernels.build("x86-64", tmp_path)
    assert (kernels.isa(avx2), kernels.isa(generic)) == ("avx2", "generic")
    q, scales = _int8(45, 203)
    w = torch.randn(45, 203).bfloat16()
    x = torch.randn(6, 203)
    assert (kernels.int8_isa(avx2), kernels.int8_isa(generic)) == ("avx2", "generic")
    native = kernels.int8_linear(x, q, scales)
    for lib in (avx2, generic):
        assert torch.equal(kernels.int8_linear(x, q, scales, lib=lib), native)
    assert torch.equal(kernels.bf16_linear(x, w, lib=avx2),
                       kernels.bf16_linear(x, w, lib=generic))
    w32 = _decode_layout(45, 203)
    assert torch.equal(kernels.f32_linear(x, w32, lib=avx2),
                       kernels.f32_linear(x, w32, lib=generic))
    for dtype in (torch.float32, torch.bfloat16):
        operands = _attention_operands(dtype)
        assert torch.equal(kernels.decode_attention(*operands, lib=avx2),
                           kernels.decode_attention(*operands, lib=generic))


@pytest.mark.skipif(not X86, reason="the AVX2 and portable builds are x86-64 targets")
def test_int8_sums_stay_exact_at_the_longest_rows_and_the_extreme_codes(tmp_path) -> None:
    """K = INT8_MAX_K with every code at -128 or 127 and every activation at max|x| (the
    largest digits): the integer sums' worst case, past any int32 lane without its spills.
    x = 1 puts every P at Q, so y = scale * sum(q), exactly, on every build (two rows: the
    prefill path too; a sign-alternating row: the lanes' cancellations)."""
    k = kernels.INT8_MAX_K
    q = torch.full((3, k), 127, dtype=torch.int8)
    q[1] = -128
    q[2, ::2] = -128
    scales = torch.tensor([1.0, 0.5, 0.25])
    x = torch.ones(2, k)
    x[1, 1::2] = -1.0
    expected = (x.double() @ q.double().t()) * scales.double()[None]
    libs = [None, kernels.build("x86-64-v3", tmp_path), kernels.build("x86-64", tmp_path)]
    for lib in libs:
        assert torch.equal(kernels.int8_linear(x, q, scales, lib=lib), expected.float())
        assert torch.equal(kernels.int8_linear(x[:1], q, scales, lib=lib), expected[:1].float())


@pytest.mark.parametrize("outlier", [1.0, 1e3])
def test_int8_error_is_the_fixed_point_rounding_of_the_activations_at_most(outlier) -> None:
    """|y - x W^T| <= (max|x| / 2Q) sum|W| + y's own float32 rounding, Q = 127 * 254^2,
    with and without one outlier column a thousand times the others."""
    q, scales = _int8(33, 1000 + 7, seed=4)
    x = torch.randn(9, 1007, generator=torch.Generator().manual_seed(5))
    x[:, 17] *= outlier
    w = q.double() * scales.double()[:, None]
    ref = _reference(x, w)
    y = kernels.int8_linear(x, q, scales).double()
    step = x.abs().amax(1, keepdim=True).double() / (127 * 254 ** 2)
    bound = step / 2 * w.abs().sum(1)[None] + ref.abs() * 2.0 ** -24
    assert ((y - ref).abs() <= bound * (1 + 1e-9)).all()
    # activations on the grid are not rounded at all: the product is exact (then rounded once)
    on_grid = torch.randint(-127, 128, (4, 1007), generator=torch.Generator().manual_seed(6)
                            ).float()
    on_grid[:, 0] = 127.0  # max|x| = 127: x * Q / 127 is an integer, no rounding at all
    exact = (on_grid.double() @ q.double().t()) * scales.double()[None]
    assert torch.equal(kernels.int8_linear(on_grid, q, scales), exact.float())


@pytest.mark.parametrize("kind", ["int8", "bf16", "f32"])
def test_empty_products(kind) -> None:
    """No rows, or rows of no columns (then the bias alone)."""
    bias = torch.randn(6)
    for m, k in ((0, 16), (3, 0)):
        q, scales = _int8(6, k)
        x = torch.randn(m, k)
        if kind == "f32":
            y = kernels.f32_linear(x, torch.zeros(k, 6).t(), bias)
        else:
            y = kernels.int8_linear(x, q, scales, bias) if kind == "int8" else \
                kernels.bf16_linear(x, q.bfloat16(), bias)
        assert torch.equal(y, torch.zeros(m, 6) + bias)


def test_int8_rows_of_zeros_and_of_non_finite_values() -> None:
    q, scales = _int8(20, 64)
    x = torch.randn(3, 64)
    x[0] = 0.0
    x[2, 5] = float("inf")
    y = kernels.int8_linear(x, q, scales)
    assert torch.equal(y[0], torch.zeros(20))
    assert torch.equal(y[1], kernels.int8_linear(x[1], q, scales))
    assert y[2].isnan().all()  # loud, not a row of plausible numbers


def test_a_build_is_cached_by_its_inputs_and_leaves_no_temporary_files(tmp_path) -> None:
    kernels.build(directory=tmp_path)
    (built,) = tmp_path.iterdir()
    stamp = built.stat().st_mtime_ns
    kernels.build(directory=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [built.name]
    assert built.stat().st_mtime_ns == stamp  # found, not compiled again


def test_a_missing_compiler_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler-lalm")
    with pytest.raises(kernels.KernelBuildError, match="no C compiler"):
        kernels.build(directory=tmp_path)


def test_an_unwritable_cache_is_a_build_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(kernels.KernelBuildError, match="building"):
        kernels.build(directory=blocker / "kernels")


@pytest.mark.parametrize("env", [{"LALM_KERNELS": "0"}, {"CC": "no-such-compiler-lalm"}])
def test_without_kernels_a_process_falls_back_to_torch_and_says_why(env, tmp_path) -> None:
    script = ("import warnings, torch; warnings.simplefilter('always')\n"
              "from lalm import kernels\n"
              "from lalm.model.quant import Int8Linear\n"
              "layer = Int8Linear.from_linear(torch.nn.Linear(64, 32))\n"
              "print(kernels.available(), layer.uses_kernel(), layer(torch.randn(2, 64)).shape)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "LALM_CACHE": str(tmp_path), **env})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "True", "torch.Size([2,", "32])"]
    if "CC" in env:
        assert "kernels are unavailable" in run.stderr and "no C compiler" in run.stderr


def test_bad_inputs_are_value_errors() -> None:
    q, scales = _int8(8, 16)
    with pytest.raises(ValueError, match="int8"):
        kernels.int8_linear(torch.randn(1, 16), q.float(), scales)
    with pytest.raises(ValueError, match="end in 15"):
        kernels.int8_linear(torch.randn(1, 15), q, scales)
    with pytest.raises(ValueError, match="scales must be"):
        kernels.int8_linear(torch.randn(1, 16), q, scales[:4])
    wide = torch.zeros(1, kernels.INT8_MAX_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match="exact up to"):
        kernels.int8_linear(torch.randn(1, kernels.INT8_MAX_K + 1), wide, torch.ones(1))
    with pytest.raises(ValueError, match="not contiguous"):
        kernels.bf16_linear(torch.randn(1, 8), torch.randn(8, 16).bfloat16().t())
    with pytest.raises(ValueError, match="float activations"):
        kernels.bf16_linear(torch.ones(1, 16, dtype=torch.int64), torch.randn(8, 16).bfloat16())
    with pytest.raises(ValueError, match=r"strides \(1, N\)"):
        kernels.f32_linear(torch.randn(1, 16), torch.randn(8, 16))  # [N, K] contiguous


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_many_equals_one_product_at_a_time(dtype) -> None:
    """Several weights over one x in one pass: each output bit for bit `int8_linear`'s, for
    widths that do not fill the last chunk, one and several rows, one and two threads."""
    weights = []
    for seed, n in enumerate((200, 64, 37)):
        q, scales = _int8(n, 4096 + 5, seed=seed)
        bias = torch.randn(n, generator=torch.Generator().manual_seed(seed)) if seed else None
        weights.append((q, scales.to(dtype), bias))
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            for rows in (1, 5):
                x = torch.randn(rows, 4096 + 5, generator=torch.Generator().manual_seed(9)
                                ).to(dtype)
                many = kernels.int8_linear_many(x, weights)
                assert [y.shape for y in many] == [(rows, 200), (rows, 64), (rows, 37)]
                for y, (q, scales, bias) in zip(many, weights):
                    assert y.dtype == dtype
                    assert torch.equal(y, kernels.int8_linear(x, q, scales, bias))
    finally:
        torch.set_num_threads(threads)
    q, scales = _int8(8, 16)
    with pytest.raises(ValueError, match="1 to 8 weights"):
        kernels.int8_linear_many(torch.randn(1, 16), [])
    with pytest.raises(ValueError, match="one dtype"):
        kernels.int8_linear_many(torch.randn(1, 16), [(q, scales, None),
                                                      (q, scales.bfloat16(), None)])


def test_an_int8_decoder_fuses_its_shared_input_products_to_the_same_bits(monkeypatch) -> None:
    """q/k/v and gate/up run as one pass each (`lalm.model.layers.project`); a hooked layer
    (the hook must see its call) makes its group run one by one: same outputs either way."""
    from lalm.model.quant import quantize_model

    decoder = _bf16_decoder()
    quantize_model(decoder, "int8")
    ids = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(7).expand(2, 7)
    passes, hooked = [], []
    many = kernels.int8_linear_many
    monkeypatch.setattr(kernels, "int8_linear_many",
                        lambda x, weights: passes.append(len(weights)) or many(x, weights))
    with torch.inference_mode():
        fused = decoder(decoder.embed(ids), pos)
        assert passes == [3, 2, 3, 2]  # per layer: q/k/v, gate/up
        attention = decoder.layers[0].attn
        handle = attention.k.register_forward_hook(lambda *_: hooked.append(1))
        gate = decoder.layers[1].mlp.gate
        gate.forward = gate.forward  # a replaced forward, as profilers do: not fused either
        passes.clear()
        one_by_one = decoder(decoder.embed(ids), pos)
        handle.remove()
    assert passes == [2, 3] and hooked == [1]
    assert torch.equal(fused, one_by_one)
    assert attention.q.kernel_operands() is not None and gate.kernel_operands() is None


def test_int8_linear_takes_lalms_kernel_and_agrees_with_torchs() -> None:
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(256, 96, bias=True).bfloat16())
    x = torch.randn(4, 256).bfloat16()
    ours = layer(x)
    expected = kernels.int8_linear(x.float(), layer.weight, layer.scales).bfloat16() + layer.bias
    assert torch.equal(ours, expected)
    with kernels.torch_kernels():
        assert not kernels.available()
        theirs = layer(x)
    assert kernels.available()
    assert torch.allclose(ours.float(), theirs.float(), rtol=2e-2, atol=2e-2)


def _bf16_decoder() -> TextDecoder:
    return _small_decoder().bfloat16()


def test_a_bf16_decoder_streams_its_products_once_it_decodes() -> None:
    decoder = _bf16_decoder()
    ids = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = decoder(decoder.embed(ids), torch.arange(9).expand(3, 9))
    decoder.setup_caches(3, 16)
    decoder.clear_caches()
    linears = [m for m in decoder.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is StreamLinear for m in linears)
    assert set(decoder.state_dict()) == set(_bf16_decoder().state_dict())
    with torch.inference_mode():
        after = decoder(decoder.embed(ids), torch.arange(9).expand(3, 9))
        row = decoder(decoder.embed(ids[1:2]), torch.arange(9)[None])
    assert torch.allclose(after.float(), before.float(), rtol=0.05, atol=0.05)
    assert torch.equal(row[0], after[1])  # rows do not depend on each other
    # with gradients wanted the layer takes torch's product (the kernel has no backward)
    layer = linears[0]
    x = torch.randn(2, 64, dtype=torch.bfloat16, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_stream_linear_equals_upcast_for_float32_activations() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(96, 40).bfloat16()
    layer.__class__ = UpcastLinear
    x = torch.randn(3, 96)
    with torch.no_grad():
        upcast = layer(x)
        layer.__class__ = StreamLinear
        streamed = layer(x)
    assert streamed.dtype == torch.float32
    assert torch.allclose(streamed, upcast, rtol=1e-5, atol=1e-5)


def _attention_operands(dtype: torch.dtype, batch: int = 3, heads: int = 8, kv_heads: int = 2,
                        keys: int = 37, width: int = 64, columns: int = 50
                        ) -> tuple[torch.Tensor, ...]:
    """q [B, H, 1, D]; k, v [B, H_kv, keys, D] windows of a cache of `columns` columns; a mask
    [B, 1, 1, keys] with rows of different lengths and holes (left pads, a dropped key)."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(batch, heads, 1, width, generator=g).to(dtype)
    cache = torch.randn(2, batch, kv_heads, columns, width, generator=g).to(dtype)
    mask = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
    mask[0, ..., 30:] = False  # a shorter row
    mask[1, ..., :4] = False  # left padding
    mask[2, ..., 17] = False
    return q, cache[0, :, :, :keys], cache[1, :, :, :keys], mask


@pytest.mark.parametrize("kv_heads", [2, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_equals_torchs_attention(dtype, kv_heads) -> None:
    q, k, v, mask = _attention_operands(dtype, kv_heads=kv_heads)
    assert kernels.attends(q, k, v, mask)
    out = kernels.decode_attention(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == dtype
    reference = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=True)
    # float32: summed in float32; bf16: the output rounded once to bf16 (8 significant bits)
    tolerance = 1e-6 if dtype == torch.float32 else 2 ** -8
    assert torch.allclose(out.double(), reference, rtol=tolerance, atol=tolerance)


def test_decode_attention_gives_a_row_the_same_bits_alone_and_at_any_thread_count() -> None:
    """A row's keys are taken in order: alone, in a window cut after its last key, or among
    rows of other lengths, at one thread or two, it gets the same bits."""
    q, k, v, mask = _attention_operands(torch.float32, keys=45)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.decode_attention(q, k, v, mask)
        torch.set_num_threads(2)
        assert torch.equal(kernels.decode_attention(q, k, v, mask), one)
    finally:
        torch.set_num_threads(threads)
    alone = kernels.decode_attention(q[:1], k[:1, :, :30], v[:1, :, :30], mask[:1, ..., :30])
    assert torch.equal(alone, one[:1])
    assert torch.equal(kernels.decode_attention(q[1:], k[1:], v[1:], mask[1:]), one[1:])


def test_decode_attention_of_a_row_with_no_key_is_zero() -> None:
    q, k, v, mask = _attention_operands(torch.float32)
    mask[1] = False
    out = kernels.decode_attention(q, k, v, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and out.isfinite().all()


def test_decode_attention_refuses_what_it_does_not_take() -> None:
    q, k, v, mask = _attention_operands(torch.float32)
    assert not kernels.attends(q.expand(3, 8, 2, 64), k, v, mask)  # two positions: a prefill
    assert not kernels.attends(q[:, :, 0], k, v, mask)  # [B, H, D]: not a query per row
    assert not kernels.attends(q.half(), k.half(), v.half(), mask)
    assert not kernels.attends(q, k.transpose(2, 3).contiguous().transpose(2, 3), v, mask)
    assert not kernels.attends(q[..., :40], k[..., :40], v[..., :40], mask)  # 40 % 16
    assert not kernels.attends(q.clone().requires_grad_(), k, v, mask)
    with torch.no_grad():
        assert kernels.attends(q.clone().requires_grad_(), k, v, mask)
    with kernels.torch_kernels():
        assert not kernels.attends(q, k, v, mask)
    assert not kernels.attends(q, k, v, mask[..., :30])
    assert not kernels.attends(q, k, v, torch.zeros(mask.shape))  # an additive mask
    with pytest.raises(ValueError, match="bool mask"):
        kernels.decode_attention(q, k, v, mask[..., :30])
    with pytest.raises(ValueError, match="KVCache window"):
        kernels.decode_attention(q.half(), k.half(), v.half(), mask)


def _greedy_decode(decoder: TextDecoder, steps: int = 5
                   ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """A two-row prompt (one left-padded) through `decoder`'s KV cache and `steps` greedy
    decode steps: (each step's logits, the [steps, 2] tokens, the cache's keys and values)."""
    ids = torch.randint(0, decoder.config.vocab_size, (2, 9),
                        generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False  # a left-padded row
    cache = decoder.setup_caches(2, 20)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits_seen, tokens = [], []
    with torch.inference_mode():
        logits = decoder(decoder.embed(ids), pos, mask, output="last_logits")
        for step in range(steps):
            token = logits.argmax(-1)
            tokens.append(token)
            logits = decoder(decoder.embed(token[:, None]), pos[:, -1:] + step + 1,
                             output="last_logits")
            logits_seen.append(logits)
    return logits_seen, torch.stack(tokens), torch.stack((cache.k, cache.v))


def _small_decoder() -> TextDecoder:
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=300, dim=64, n_layer=2, n_head=4, n_kv_head=2,
                           hidden_dim=160, max_seq_len=64)
    return TextDecoder(config).eval()


def test_a_decoder_attends_its_decode_steps_with_lalms_kernel(monkeypatch) -> None:
    """Decode steps (one new position over the cache) take `decode_attention`; the prefill
    takes torch's; the logits agree with torch's attention to float32 rounding and the greedy
    tokens are the same."""
    decoder = _small_decoder()
    # the modules' path: a fused step calls the same kernel from C (test_decode_layers)
    monkeypatch.setattr(decoder, "_decode_step", lambda *step: None)
    calls = []
    attend = kernels.decode_attention
    monkeypatch.setattr(kernels, "decode_attention",
                        lambda *a: calls.append(1) or attend(*a))
    with_kernel, tokens, _ = _greedy_decode(decoder)
    assert len(calls) == 5 * decoder.config.n_layer
    monkeypatch.setattr(kernels, "attends", lambda *a: False)
    without, torch_tokens, _ = _greedy_decode(decoder)
    assert len(calls) == 5 * decoder.config.n_layer
    assert torch.equal(tokens, torch_tokens)
    for a, b in zip(with_kernel, without):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def _norm_operands(dtype: torch.dtype, rows: int = 5, width: int = 96
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, 1, width] (rows of different scales, one of zeros) and a weight [width]."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(rows, 1, width, generator=g) * torch.logspace(-3, 3, rows)[:, None, None]
    x[1] = 0.0
    return x.to(dtype), (torch.rand(width, generator=g) + 0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_the_float64_formula_and_torchs(dtype) -> None:
    x, weight = _norm_operands(dtype)
    assert kernels.normalizes(x, weight)
    out = kernels.rms_norm(x, weight, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    wide = x.double()
    exact = weight.double() * wide / (wide.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    # float32: a few roundings; bf16: the normed row and the product rounded to 8 bits
    tolerance = 1e-6 if dtype == torch.float32 else 2 ** -7
    assert torch.allclose(out.double(), exact, rtol=tolerance, atol=0)
    with kernels.torch_kernels():
        theirs = RMSNorm(x.shape[-1], 1e-6).to(dtype)
        theirs.weight.data = weight
        with torch.no_grad():
            torch_out = theirs(x)
    assert torch.allclose(out.double(), torch_out.double(), rtol=tolerance, atol=0)


def test_rms_norm_gives_a_row_the_same_bits_alone_among_others_and_at_any_thread_count(
        ) -> None:
    """Rows split among threads past 2^16 elements (a prefill); a row's bits stay its own."""
    x, weight = _norm_operands(torch.float32, rows=80, width=1024)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.rms_norm(x, weight, 1e-5)
        torch.set_num_threads(2)
        assert torch.equal(kernels.rms_norm(x, weight, 1e-5), one)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(kernels.rms_norm(x[3:4], weight, 1e-5), one[3:4])
    strided = x.transpose(0, 1).contiguous().transpose(0, 1)  # the same values, not contiguous
    assert torch.equal(kernels.rms_norm(strided, weight, 1e-5), one)


def test_rms_norm_of_non_finite_rows_is_torchs() -> None:
    """An infinite element makes its row's scale 0 (that element NaN, the rest 0), a NaN the
    whole row NaN, as torch's ops give; a row of zeros stays zeros."""
    x, weight = _norm_operands(torch.float32)
    x[0, 0, 3], x[2, 0, 5] = float("inf"), float("nan")
    out = kernels.rms_norm(x, weight, 1e-6)
    norm = RMSNorm(x.shape[-1], 1e-6)
    norm.weight.data = weight
    with kernels.torch_kernels(), torch.no_grad():
        theirs = norm(x)
    assert torch.equal(out.isnan(), theirs.isnan()) and out[2].isnan().all()
    assert torch.equal(out[0].nan_to_num(), theirs[0].nan_to_num())
    assert torch.equal(out[1], torch.zeros_like(out[1])) and out[3:].isfinite().all()


def _rope_operands(dtype: torch.dtype, batch: int = 2, heads: int = 4, seq: int = 3,
                   width: int = 64) -> tuple[torch.Tensor, ...]:
    """x [B, H, S, D] as a decoder makes it (heads of a [B, S, H * D] projection,
    transposed) and the rows' RoPE tables at different positions."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(batch, seq, heads, width, generator=g).to(dtype).transpose(1, 2)
    pos = torch.arange(seq)[None] + torch.arange(batch)[:, None] * 100
    cos, sin = rope_cos_sin(pos, rope_inv_freq(width, torch.full((batch,), 1e4)), dtype)
    return x, cos, sin


@pytest.mark.parametrize("shape", [(2, 4, 3, 64), (1, 8, 64, 128)])  # a prefill: threads
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_has_the_bits_of_torchs_ops(dtype, shape) -> None:
    x, cos, sin = _rope_operands(dtype, *shape)
    assert kernels.rotates(x, cos, sin)
    out = kernels.rope(x, cos, sin)
    with kernels.torch_kernels():
        theirs = apply_rope(x, cos, sin)
    assert out.is_contiguous() and torch.equal(out, theirs)
    assert torch.equal(kernels.rope(x[1:], cos[1:], sin[1:]), out[1:])


def test_norm_and_rope_refuse_what_they_do_not_take() -> None:
    x, weight = _norm_operands(torch.float32)
    assert not kernels.normalizes(x.half(), weight.half())
    assert not kernels.normalizes(x, weight.double())
    assert not kernels.normalizes(x[..., :50], weight)
    assert not kernels.normalizes(x, weight.clone().requires_grad_())  # a training forward
    with torch.no_grad():
        assert kernels.normalizes(x, weight.clone().requires_grad_())
    with kernels.torch_kernels():
        assert not kernels.normalizes(x, weight)
    with pytest.raises(ValueError, match="weight"):
        kernels.rms_norm(x, weight[:50], 1e-6)
    q, cos, sin = _rope_operands(torch.float32)
    assert not kernels.rotates(q, cos[:1], sin[:1])  # tables broadcast over rows
    assert not kernels.rotates(q.half(), cos.half(), sin.half())
    assert not kernels.rotates(q[..., :63], cos[..., :63], sin[..., :63])  # an odd width
    assert not kernels.rotates(q.transpose(2, 3), cos, sin)
    assert not kernels.rotates(q.clone().requires_grad_(), cos, sin)
    with kernels.torch_kernels():
        assert not kernels.rotates(q, cos, sin)
    with pytest.raises(ValueError, match="cos/sin"):
        kernels.rope(q[0], cos, sin)


def test_a_training_forward_never_builds_the_kernels() -> None:
    """`normalizes`, `rotates` and a decoder's fused decode step check the operands before
    `available()`: a forward that wants gradients (or runs off the CPU) takes torch's ops
    without compiling anything."""
    code = ("import torch\n"
            "from lalm import kernels\n"
            "from lalm.config import DecoderConfig\n"
            "from lalm.model.decoder import TextDecoder\n"
            "from lalm.model.layers import RMSNorm, apply_rope\n"
            "norm = RMSNorm(8, 1e-6)\n"
            "x = torch.randn(1, 2, 3, 8, requires_grad=True)\n"
            "table = torch.ones(1, 1, 3, 8)\n"
            "(norm(x).sum() + apply_rope(x, table, table).sum()).backward()\n"
            "decoder = TextDecoder(DecoderConfig(vocab_size=40, dim=32, n_layer=1, n_head=2,\n"
            "                                    n_kv_head=1, hidden_dim=48, max_seq_len=8))\n"
            "decoder.setup_caches(1, 4)\n"
            "ids = torch.tensor([[1, 2]])\n"
            "decoder(decoder.embed(ids), torch.arange(2)[None])  # gradients enabled\n"
            "decoder(decoder.embed(ids[:, :1]), torch.tensor([[2]]))  # a decode step\n"
            "assert kernels.library.cache_info().currsize == 0\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "LALM_CACHE": "/nonexistent/lalm-cache"})
    assert run.returncode == 0, run.stderr


def test_a_decoder_norms_and_rotates_with_lalms_kernels(monkeypatch) -> None:
    """A decoder's RMSNorms and RoPE (prefill and decode steps, every layer) take lalm's
    kernels in inference; the logits agree with torch's ops to float32 rounding and the
    greedy tokens are the same."""
    decoder = _small_decoder()
    # the modules' path: a fused step calls the same kernels from C (test_decode_layers)
    monkeypatch.setattr(decoder, "_decode_step", lambda *step: None)
    calls = []
    norm, rope = kernels.rms_norm, kernels.rope
    monkeypatch.setattr(kernels, "rms_norm", lambda *a: calls.append("norm") or norm(*a))
    monkeypatch.setattr(kernels, "rope", lambda *a: calls.append("rope") or rope(*a))
    with_kernels, tokens, _ = _greedy_decode(decoder)
    layers = decoder.config.n_layer
    # 6 forwards, each: two norms and RoPE of q and k a layer, and the final norm
    assert calls.count("norm") == 6 * (2 * layers + 1) and calls.count("rope") == 6 * 2 * layers
    with kernels.torch_kernels():
        without, torch_tokens, _ = _greedy_decode(decoder)
    assert torch.equal(tokens, torch_tokens)
    for a, b in zip(with_kernels, without):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
