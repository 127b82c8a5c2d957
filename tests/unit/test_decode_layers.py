"""A decode step's layers in one call of lalm's kernels (`kernels.DecodeLayers`, which
`TextDecoder` takes on the CPU in inference) and SwiGLU's activation (`kernels.silu_mul`): the
fused step against the modules' path, bit for bit for int8 and bf16 weights (biases, q/k
norms, float32 and bf16 activations, logn factors, rows at different cache lengths) and to
float32 rounding for float32 weights (MKL's products against `f32_linear`), a row alone
against the same row in a batch, the plan kept while it holds, the models that keep the
modules' path, the refusals; silu against float64 and torch, and its bits across rows,
threads and builds."""

from __future__ import annotations

import copy
import itertools
import platform

import pytest
import torch
import torch.nn.functional as F

from lalm import kernels
from lalm.config import DecoderConfig
from lalm.model.decoder import _DECODE_PLANS, DecoderLayer, TextDecoder
from lalm.model.layers import SwiGLU
from lalm.model.quant import quantize_model
from lalm.model.upcast import upcast_compute
from tests.unit.test_kernels import _greedy_decode

pytestmark = pytest.mark.skipif(not kernels.available(),
                                reason="lalm's kernels did not build here (no C compiler)")


def _silu64(gate: torch.Tensor) -> torch.Tensor:
    g = gate.double()
    return g / (1 + torch.exp(-g))


def test_silu_mul_is_within_float32_rounding_of_the_exact_silu() -> None:
    gate = torch.cat([torch.linspace(-100, 100, 40001), torch.randn(20000) * 5])
    up = torch.rand(gate.shape) + 0.5
    out = kernels.silu_mul(gate, up).double()
    exact = _silu64(gate).float().double() * up.double()  # silu rounded once, times up
    error = (out - exact).abs()
    assert (error <= 2.5 * torch.finfo(torch.float32).eps * exact.abs() + 1e-36).all()
    # and torch's own to the same bound (its exp differs from lalm's in the last bits)
    theirs = (F.silu(gate) * up).double()
    assert ((out - theirs).abs() <= 4 * torch.finfo(torch.float32).eps * exact.abs()
            + 1e-36).all()


def test_silu_mul_in_bf16_rounds_silu_then_the_product() -> None:
    gate = (torch.randn(5000) * 4).bfloat16()
    up = torch.randn(5000).bfloat16()
    out = kernels.silu_mul(gate, up)
    assert out.dtype == torch.bfloat16
    expected = (_silu64(gate).float().bfloat16().float() * up.float()).bfloat16()
    step = torch.finfo(torch.bfloat16).eps
    # silu's float32 value may round to the neighbouring bf16 where it lies near a midpoint
    assert ((out.float() - expected.float()).abs()
            <= 2 * step * expected.float().abs() + 1e-30).all()
    assert (out == (F.silu(gate) * up)).float().mean() > 0.99


def test_silu_mul_of_extreme_and_non_finite_gates_is_torchs() -> None:
    gate = torch.tensor([-float("inf"), float("inf"), float("nan"), -1e30, 1e30, -200.0,
                         100.0, 0.0, -0.0, 87.5, -87.5])
    up = torch.ones_like(gate)
    out, theirs = kernels.silu_mul(gate, up), F.silu(gate) * up
    assert torch.equal(out.isnan(), theirs.isnan())
    assert torch.allclose(out.nan_to_num(), theirs.nan_to_num(), rtol=1e-6, atol=1e-36)
    assert torch.equal(out.signbit(), theirs.signbit())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the AVX2 and portable builds are x86-64 targets")
def test_silu_mul_bits_do_not_depend_on_the_rows_threads_or_build(tmp_path) -> None:
    gate, up = torch.randn(3, 40000) * 6, torch.randn(3, 40000)  # past the threads' split
    out = kernels.silu_mul(gate, up)
    assert torch.equal(kernels.silu_mul(gate[1], up[1]), out[1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(kernels.silu_mul(gate, up), out)
    finally:
        torch.set_num_threads(threads)
    for march in ("x86-64-v3", "x86-64"):
        assert torch.equal(kernels.silu_mul(gate, up, lib=kernels.build(march, tmp_path)), out)


def test_silu_mul_refuses_what_it_does_not_take() -> None:
    gate = torch.randn(4, 8)
    assert not kernels.activates(gate.half(), gate.half())
    assert not kernels.activates(gate, gate[:, :4])
    assert not kernels.activates(gate, gate.bfloat16())
    assert not kernels.activates(gate.clone().requires_grad_(), gate)
    with kernels.torch_kernels():
        assert not kernels.activates(gate, gate)
    with pytest.raises(ValueError, match="one shape and dtype"):
        kernels.silu_mul(gate, gate.double())


def test_swiglu_takes_silu_mul_in_inference_and_torchs_ops_in_training(monkeypatch) -> None:
    mlp = SwiGLU(16, 40)
    x = torch.randn(3, 16)
    calls = []
    fused = kernels.silu_mul
    monkeypatch.setattr(kernels, "silu_mul", lambda *a: calls.append(1) or fused(*a))
    with torch.no_grad():
        ours = mlp(x)
    assert calls == [1]
    theirs = mlp(x)  # gradients wanted: torch's silu
    assert calls == [1] and theirs.requires_grad
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def _int8_decoder(qkv_bias: bool = True, qk_norm: bool = False, dtype: torch.dtype =
                  torch.float32, logn: bool = False) -> TextDecoder:
    """A two-layer GQA decoder with int8 products (norm weights and biases drawn, so they
    count), computing in `dtype`; logn factors past 10 positions where `logn`."""
    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=300, dim=64, n_layer=2, n_head=4, n_kv_head=2,
                           hidden_dim=160, max_seq_len=64, qkv_bias=qkv_bias,
                           qk_norm=qk_norm, logn_attn=logn, train_seq_len=10)
    decoder = TextDecoder(config).eval()
    with torch.no_grad():
        for param in decoder.parameters():
            if param.ndim == 1:
                param.normal_(0.5, 0.3)
    quantize_model(decoder, "int8")
    return decoder.to(dtype)


def _counted(monkeypatch) -> list[int]:
    """A list that gets an item at each fused step (`kernels.DecodeLayers.__call__`)."""
    calls: list[int] = []
    fused = kernels.DecodeLayers.__call__
    monkeypatch.setattr(kernels.DecodeLayers, "__call__",
                        lambda *a, **k: calls.append(1) or fused(*a, **k))
    return calls


def _modules_only(monkeypatch, decoder: TextDecoder) -> None:
    """Make `decoder`'s decode steps run its modules."""
    monkeypatch.setattr(decoder, "_decode_step", lambda *step: None)


@pytest.mark.parametrize("qkv_bias,qk_norm,dtype,logn", [
    (bias, norm, dtype, logn) for bias, norm, dtype, logn in itertools.product(
        (True, False), (False, True), (torch.float32, torch.bfloat16), (False, True))])
def test_a_fused_decode_step_has_the_modules_bits(monkeypatch, qkv_bias, qk_norm, dtype,
                                                  logn) -> None:
    """Every decode step of an int8 decoder takes one `decode_layers` call; its logits, tokens
    and KV cache equal the modules' path bit for bit."""
    decoder = _int8_decoder(qkv_bias, qk_norm, dtype, logn)
    assert decoder.decode_operands() is not None
    calls = _counted(monkeypatch)
    fused, tokens, cache = _greedy_decode(decoder)
    assert len(calls) == 5
    _modules_only(monkeypatch, decoder)
    modules, module_tokens, module_cache = _greedy_decode(decoder)
    assert len(calls) == 5
    assert torch.equal(tokens, module_tokens) and torch.equal(cache, module_cache)
    assert all(torch.equal(a, b) for a, b in zip(fused, modules))


def _float_decoder(dtype: torch.dtype, compute: torch.dtype | None = None) -> TextDecoder:
    """`_int8_decoder`'s shapes with weights in `dtype` (bf16: computing in `compute`, float32
    over the bf16 weights as `load_model` makes it on a CPU without bf16 units, or bf16)."""
    decoder = _int8_decoder()
    torch.manual_seed(0)
    plain = TextDecoder(decoder.config).eval()
    with torch.no_grad():
        for param in plain.parameters():
            if param.ndim == 1:
                param.normal_(0.5, 0.3)
    plain = plain.to(dtype)
    if compute is not None:
        upcast_compute(plain, compute)
    return plain


@pytest.mark.parametrize("dtype,compute", [(torch.bfloat16, torch.float32),
                                           (torch.bfloat16, None)])
def test_a_fused_decode_step_of_bf16_weights_has_the_modules_bits(monkeypatch, dtype,
                                                                   compute) -> None:
    """bf16 weights (streamed, `StreamLinear`), computing in float32 or bf16: one call a
    step, the modules' bits."""
    decoder = _float_decoder(dtype, compute)
    calls = _counted(monkeypatch)
    fused, tokens, cache = _greedy_decode(decoder)
    assert len(calls) == 5 and decoder.decode_operands()[0]["q"].dtype == torch.bfloat16
    _modules_only(monkeypatch, decoder)
    modules, module_tokens, module_cache = _greedy_decode(decoder)
    assert torch.equal(tokens, module_tokens) and torch.equal(cache, module_cache)
    assert all(torch.equal(a, b) for a, b in zip(fused, modules))


def test_a_fused_decode_step_of_float32_weights_equals_the_modules_to_rounding(
        monkeypatch) -> None:
    """float32 weights take `f32_linear` where the modules take MKL's product (the layers in
    the fused call, the head through `f32_linear`): the same tokens, logits within float32
    rounding of each other."""
    decoder = _float_decoder(torch.float32)
    calls, heads = _counted(monkeypatch), []
    f32_linear = kernels.f32_linear
    monkeypatch.setattr(kernels, "f32_linear", lambda *a: heads.append(1) or f32_linear(*a))
    fused, tokens, cache = _greedy_decode(decoder)
    assert len(calls) == len(heads) == 5
    _modules_only(monkeypatch, decoder)
    modules, module_tokens, module_cache = _greedy_decode(decoder)
    assert torch.equal(tokens, module_tokens)
    assert torch.allclose(cache, module_cache, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused, modules):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_rows_at_different_cache_lengths_decode_as_they_do_alone(monkeypatch) -> None:
    """Two slots of one cache prefilled apart (7 and 12 tokens), then decoded together in
    fused steps: each row's logits are its logits decoding alone, bit for bit, and the
    modules' path gives the same."""
    decoder = _int8_decoder()
    prompts = [torch.randint(0, 300, (1, n), generator=torch.Generator().manual_seed(n))
               for n in (7, 12)]

    def run(together: bool) -> list[torch.Tensor]:
        cache = decoder.setup_caches(2, 24)
        last = []
        with torch.inference_mode():
            for row, ids in enumerate(prompts):
                cache.use_rows(row, row + 1)
                pos = torch.arange(ids.shape[1])[None]
                last.append(decoder(decoder.embed(ids), pos, output="last_logits"))
            rows = [(0, 2)] if together else [(0, 1), (1, 2)]
            seen = []
            for start, stop in rows:
                cache.use_rows(start, stop)
                logits = torch.cat(last[start:stop])
                for _ in range(4):
                    token = logits.argmax(-1)
                    pos = torch.tensor([[cache.lengths[r]] for r in range(start, stop)])
                    logits = decoder(decoder.embed(token[:, None]), pos, output="last_logits")
                    seen.append(logits)
        if together:
            return seen
        return [torch.cat((a, b)) for a, b in zip(seen[:4], seen[4:])]

    calls = _counted(monkeypatch)
    together, alone = run(True), run(False)
    assert len(calls) == 12
    assert all(torch.equal(a, b) for a, b in zip(together, alone))
    _modules_only(monkeypatch, decoder)
    assert all(torch.equal(a, b) for a, b in zip(run(True), together))


def test_decoders_the_fused_step_would_pass_by_keep_their_modules(monkeypatch) -> None:
    """A float32 decoder, a hook, a replaced forward, a patched class forward or norms of
    another epsilon: no operands, so the modules run (and the hook sees its calls)."""
    config = DecoderConfig(vocab_size=300, dim=64, n_layer=2, n_head=4, n_kv_head=2,
                           hidden_dim=160, max_seq_len=64)
    assert TextDecoder(config).eval().decode_operands() is None  # no int8 products
    decoder = _int8_decoder()
    assert decoder.decode_operands() is not None
    seen = []
    handle = decoder.layers[1].mlp.register_forward_hook(lambda *_: seen.append(1))
    assert decoder.decode_operands() is None
    calls = _counted(monkeypatch)
    _greedy_decode(decoder)
    assert calls == [] and len(seen) == 6  # the prefill and 5 steps
    handle.remove()
    norm = decoder.layers[0].attn_norm
    norm.forward = norm.forward
    assert decoder.decode_operands() is None
    del norm.forward
    monkeypatch.setattr(DecoderLayer, "forward", lambda self, *a, **k: None)
    assert decoder.decode_operands() is None
    monkeypatch.undo()
    decoder.layers[1].mlp_norm.eps = 1e-3
    assert decoder.decode_operands() is None


def test_a_plan_that_no_longer_holds_is_made_again(monkeypatch) -> None:
    """The fused step's operands are gathered once and kept while they hold: a hook added
    between steps sends the next step to the modules (the hook sees it); weights replaced
    between steps (a new tensor, or new storage under the same one) are the ones read next."""
    decoder = _int8_decoder()
    calls = _counted(monkeypatch)
    _greedy_decode(decoder, steps=2)
    plan = _DECODE_PLANS[decoder]
    assert plan.holds(decoder, torch.float32) is not None and len(calls) == 2
    twin = copy.deepcopy(decoder)  # a copy makes its own plan, of its own tensors
    twin_logits, ours = _greedy_decode(twin, steps=2)[0], _greedy_decode(decoder, steps=2)[0]
    assert torch.equal(twin_logits[1], ours[1])
    assert len(calls) == 6 and _DECODE_PLANS[twin] is not plan
    seen = []
    handle = decoder.layers[0].attn.o.register_forward_hook(lambda *_: seen.append(1))
    assert plan.holds(decoder, torch.float32) is None
    _greedy_decode(decoder, steps=2)
    assert len(calls) == 6 and len(seen) == 3  # the modules ran every forward
    handle.remove()
    down = decoder.layers[1].mlp.down
    before, _, _ = _greedy_decode(decoder, steps=2)
    down.weight = torch.flip(down.weight, dims=[0]).contiguous()  # another tensor
    after, _, _ = _greedy_decode(decoder, steps=2)
    assert not torch.equal(before[0], after[0])
    _modules_only(monkeypatch, decoder)
    modules, _, _ = _greedy_decode(decoder, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(after, modules))
    monkeypatch.undo()
    calls = _counted(monkeypatch)
    down.weight.data = torch.flip(down.weight, dims=[1]).contiguous()  # new storage only
    again, _, _ = _greedy_decode(decoder, steps=2)
    _modules_only(monkeypatch, decoder)
    modules, _, _ = _greedy_decode(decoder, steps=2)
    assert len(calls) == 2 and all(torch.equal(a, b) for a, b in zip(again, modules))


def test_decode_layers_refuses_what_it_does_not_take() -> None:
    decoder = _int8_decoder()
    layers = decoder.decode_operands()
    shape = {"heads": 4, "kv_heads": 2, "head_dim": 16}
    assert kernels.layers_problem(layers, torch.float32, **shape) is None
    mixed = [dict(layers[0], k_bias=None), layers[1]]
    assert "layer 0: some of the q/k/v products have a bias" in kernels.layers_problem(
        mixed, torch.float32, **shape)
    odd = [layers[0], dict(layers[1], down_scales=layers[1]["down_scales"].bfloat16())]
    assert "layer 1: down_scales" in kernels.layers_problem(odd, torch.float32, **shape)
    assert "norm" in kernels.layers_problem(layers, torch.bfloat16, **shape)
    assert "heads" in kernels.layers_problem(layers, torch.float32, heads=4, kv_heads=3,
                                             head_dim=16)
    with pytest.raises(ValueError, match="DecodeLayers: layer 0"):
        kernels.DecodeLayers(mixed, torch.float32, eps=1e-6, **shape)
    fused = kernels.DecodeLayers(layers, torch.float32, eps=1e-6, **shape)
    cache = decoder.setup_caches(1, 8)
    x, table = torch.randn(1, 1, 64), torch.ones(1, 1, 1, 16)
    mask = torch.ones(1, 1, 1, 3, dtype=torch.bool)
    step = (x, table, table, mask, cache.k, cache.v, [2])

    def problem(*changed, **kw) -> str | None:
        return fused.step_problem(*changed, *step[len(changed):], **kw)

    assert "gradients enabled" in problem()  # the step records no autograd graph
    with torch.no_grad():
        assert problem() is None and fused.fits(*step)
        assert "x (1, 2, 64)" in problem(torch.randn(1, 2, 64))
        assert "x (1, 1, 64) torch.bfloat16" in problem(x.bfloat16())
        assert "a KV cache" in problem(*step[:4], cache.k[:1], cache.v[:1])
        assert "columns [3]" in problem(*step[:6], [3])
        assert "q_scale" in problem(q_scale=torch.ones(2, 1, 1, 1))
        with kernels.torch_kernels():
            assert not fused.fits(*step)
        with pytest.raises(ValueError, match="DecodeLayers: columns"):
            fused(*step[:6], [5])
