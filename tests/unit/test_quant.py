"""Weight-only int8 and int4 (`lalm.model.quant`) and saved int8/int4 checkpoints on tiny
random models: rounding error within half a step, the CPU kernels against the dequantised
product, kernel rows invariant to the batch size, logits close to fp32, batched = single on the
engine, save -> load -> identical logits, typed errors on bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lalm.checkpoint import load_model, save_model
from lalm.checkpoint.quantized import QUANT_KEY
from lalm.errors import CheckpointError
from lalm.generation import Engine, GenerationOptions, PromptBatch, generate, left_pad
from lalm.model import AudioLanguageModel
from lalm.model.quant import (
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    dequantize_int8,
    int4_group_size,
    quantize_int4,
    quantize_int8,
    quantize_model,
)
from lalm.testing.models import random_model


def _logits(model: AudioLanguageModel, ids: torch.Tensor) -> torch.Tensor:
    """[B, S, V] float32 logits of a full forward (no cache)."""
    with torch.no_grad():
        pos = torch.arange(ids.shape[1])[None].expand_as(ids)
        return model.decoder(model.decoder.embed(ids), pos)


def _ids(seed: int, shape: tuple[int, int] = (2, 13)) -> torch.Tensor:
    return torch.randint(0, 400, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def int8_model() -> AudioLanguageModel:
    model = random_model("tiny-random", seed=3)
    quantize_model(model, "int8")
    return model


@pytest.fixture(scope="module")
def int4_model() -> AudioLanguageModel:
    model = random_model("tiny-random", seed=3)
    quantize_model(model, "int4", group_size=32)
    return model


@pytest.mark.parametrize("group_size", [None, 16])
def test_dequantised_weight_is_within_half_a_step(group_size) -> None:
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    weight[5] = 0.0  # an all-zero row stays zero and finite
    q, scales = quantize_int8(weight, group_size)
    assert q.dtype == torch.int8 and q.shape == weight.shape
    assert scales.shape == ((48,) if group_size is None else (48, 4))
    back = dequantize_int8(q, scales)
    step = scales[:, None] if group_size is None else scales.repeat_interleave(16, dim=1)
    error = (back - weight).abs()
    assert bool((error <= step / 2 + 1e-7).all())  # round-to-nearest: at most half a step
    assert float(error.max()) > float(step.max()) / 8  # and really rounded, not exact
    assert int(q.abs().amax()) == 127 and torch.equal(back[5], torch.zeros(64))
    with pytest.raises(ValueError, match="group_size 24"):
        quantize_int8(weight, 24)


def test_kernel_and_fallback_products_match_the_dequantised_weight() -> None:
    linear = torch.nn.Linear(64, 40, bias=True)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    for group_size, kernel in ((None, True), (16, False)):
        module = Int8Linear.from_linear(linear, group_size)
        assert module.uses_kernel() is kernel
        with torch.no_grad():
            y = module(x)
            ref = F.linear(x, dequantize_int8(module.weight, module.scales), linear.bias)
        assert y.shape == (3, 5, 40) and y.dtype == torch.float32
        # the kernel multiplies bf16 activations and scales: ~2^-9 relative
        tolerance = 2e-2 if kernel else 1e-5
        assert float((y - ref).abs().max() / ref.abs().max()) < tolerance


@pytest.mark.parametrize(("group_size", "dtype", "slack"),
                         [(16, torch.float32, 1e-6), (32, torch.float32, 1e-6),
                          (32, torch.bfloat16, 0.02)])
def test_int4_dequantised_weight_is_within_half_a_step(group_size, dtype, slack) -> None:
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(0)) * 0.05 + 0.01
    weight[5] = 0.25  # a constant row is exact and finite
    codes, scales, zeros = quantize_int4(weight, group_size, dtype)
    assert codes.dtype == torch.uint8 and codes.shape == (48, 32)
    assert scales.shape == zeros.shape == (48, 64 // group_size) and scales.dtype == dtype
    back = dequantize_int4(codes, scales, zeros)
    step = scales.float().repeat_interleave(group_size, dim=1)
    error = (back - weight).abs()
    # round to nearest: at most half a step (bf16 scales/zeros: the rounding of the zero
    # moves the grid by up to 2^-9 of it, a few % of a step here)
    assert bool((error <= step * (0.5 + slack) + 1e-7).all()), float((error / step).max())
    assert float((error / step).max()) > 0.4  # and really rounded, not exact
    unpacked = torch.stack((codes & 15, codes >> 4), dim=-1).view(48, 64)
    assert int(unpacked.max()) == 15 and int(unpacked.min()) == 0
    assert torch.equal(back[5], torch.full((64,), 0.25).to(dtype).float())
    with pytest.raises(ValueError, match="group_size 24"):
        quantize_int4(weight, 24)
    with pytest.raises(ValueError, match="even"):
        quantize_int4(weight[:, :63], 63)


def test_int4_group_size_is_the_largest_divisor_of_the_width() -> None:
    assert int4_group_size(4096, 128) == 128 and int4_group_size(11008, 128) == 128
    assert int4_group_size(64, 128) == 64 and int4_group_size(176, 128) == 88
    assert Int4Linear(176, 64, group_size=32).group_size == 22  # no kernel: dequantised
    with pytest.raises(ValueError, match="positive"):
        int4_group_size(64, 0)


def test_int4_kernel_and_fallback_products_match_the_dequantised_weight() -> None:
    x = torch.randn(3, 5, 256, generator=torch.Generator().manual_seed(1))
    for out, group_size, kernel in ((48, 32, True), (48, 128, True), (48, 16, False),
                                    (40, 32, False)):  # kernel: out % 16, group 32..256
        linear = torch.nn.Linear(256, out, bias=True)
        module = Int4Linear.from_linear(linear, group_size)
        assert module.uses_kernel() is kernel and (module.packed is not None) is kernel
        with torch.no_grad():
            y = module(x)
            ref = F.linear(x, module.dequantize(torch.float32), linear.bias)
            float_ref = linear(x)
        assert y.shape == (3, 5, out) and y.dtype == torch.float32
        tolerance = 2e-2 if kernel else 1e-5  # the kernel: bf16 activations and scales
        assert float((y - ref).abs().max() / ref.abs().max()) < tolerance
        assert 1e-3 < float((y - float_ref).norm() / float_ref.norm()) < 0.2  # int4 rounding


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_kernel_rows_do_not_depend_on_the_batch_size(scheme) -> None:
    linear = torch.nn.Linear(512, 256, bias=False)
    module = Int8Linear.from_linear(linear) if scheme == "int8" else Int4Linear.from_linear(
        linear, 64)
    assert module.uses_kernel()
    x = torch.randn(16, 512, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.no_grad():
                full = module(x)
                for rows in (1, 3, 7, 16):
                    assert torch.equal(module(x[:rows]), full[:rows]), (n, rows)
    finally:
        torch.set_num_threads(threads)


def test_int4_packing_in_row_blocks_equals_packing_at_once(monkeypatch) -> None:
    linear = torch.nn.Linear(128, 320, bias=False)
    whole = Int4Linear.from_linear(linear, 32)
    monkeypatch.setattr("lalm.model.quant._BLOCK_ELEMENTS", 128 * 64)  # 64-row blocks
    blocked = Int4Linear.from_linear(linear, 32)
    assert torch.equal(blocked.weight, whole.weight)
    assert torch.equal(blocked.packed, whole.packed)


def test_int4_logits_are_close_to_fp32(int4_model, int8_model) -> None:
    reference = random_model("tiny-random", seed=3)
    ids = _ids(0)
    ref = _logits(reference, ids)
    rel4 = float((_logits(int4_model, ids) - ref).norm() / ref.norm())
    rel8 = float((_logits(int8_model, ids) - ref).norm() / ref.norm())
    assert rel8 < rel4 < 0.25, (rel8, rel4)  # int4 rounding: ~16x int8's step
    names = dict(int4_model.named_modules())
    assert isinstance(names["decoder.layers.1.mlp.down"], Int4Linear)
    assert isinstance(names["decoder.lm_head"], Int8Linear)  # HEAD_SCHEMES: int4 keeps it int8
    assert isinstance(names["encoder.blocks.0.attn.query"], torch.nn.Linear)  # encoder kept
    assert int4_model.state_dict()["decoder.layers.0.attn.q.weight"].dtype == torch.uint8
    assert "decoder.layers.0.attn.q.packed" not in int4_model.state_dict()  # not saved
    with pytest.raises(ValueError, match="already int4"):
        quantize_model(int4_model, "int8")
    with pytest.raises(ValueError, match="int8, int4"):
        quantize_model(reference, "int3")


def test_int8_logits_are_close_to_fp32(int8_model) -> None:
    reference = random_model("tiny-random", seed=3)
    ids = _ids(0)
    ours, ref = _logits(int8_model, ids), _logits(reference, ids)
    rel = float((ours - ref).norm() / ref.norm())
    assert 1e-4 < rel < 0.05, rel  # int8 rounding: changed, but by about 1 %
    names = dict(int8_model.named_modules())
    assert isinstance(names["decoder.layers.1.mlp.down"], Int8Linear)
    assert isinstance(names["decoder.lm_head"], Int8Linear)
    assert isinstance(names["encoder.blocks.0.attn.query"], torch.nn.Linear)  # encoder kept
    assert int8_model.state_dict()["decoder.layers.0.attn.q.weight"].dtype == torch.int8


def test_a_decoder_in_the_decode_layout_quantises_alike() -> None:
    plain, laid = random_model("tiny-random", seed=3), random_model("tiny-random", seed=3)
    laid.decoder.use_decode_layout()  # fp32 weights [in, out]-major, as after setup_caches
    assert not laid.decoder.lm_head.weight.is_contiguous()
    quantize_model(plain, "int8")
    quantize_model(laid, "int8")
    head = laid.decoder.lm_head
    quantize_model(laid, "int8")  # already quantised modules are kept, not re-quantised
    assert laid.decoder.lm_head is head
    for name, tensor in plain.state_dict().items():
        assert torch.equal(laid.state_dict()[name], tensor), name


def test_lm_head_can_stay_float() -> None:
    model = random_model("tiny-random", seed=3)
    quantize_model(model, "int8", lm_head=None)
    assert type(model.decoder.lm_head) is torch.nn.Linear
    assert isinstance(model.decoder.layers[0].attn.q, Int8Linear)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantised_batched_equals_single_with_left_padding(scheme, request) -> None:
    model = request.getfixturevalue(f"{scheme}_model")  # `generate` runs on the engine
    rows = [_ids(1, (1, 4))[0].tolist(), _ids(2, (1, 11))[0].tolist(),
            _ids(3, (1, 7))[0].tolist()]
    options = GenerationOptions(max_new_tokens=8)

    def batch(of: list[list[int]]) -> PromptBatch:
        ids, mask = left_pad(of, pad_id=0)
        return PromptBatch(ids, mask, model.decoder.embed(ids).detach())

    together = generate(model, batch(rows), options, stop_ids=())
    for row, result in zip(rows, together):
        alone = generate(model, batch([row]), options, stop_ids=())[0]
        assert result.tokens == alone.tokens
        assert result.logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_int4_engine_sequences_joining_at_different_steps_get_their_solo_tokens(
        int4_model) -> None:
    prompts = [_ids(10 + i, (1, n))[0] for i, n in enumerate((3, 12, 7, 1, 9))]
    options = [GenerationOptions(max_new_tokens=n) for n in (6, 9, 4, 8, 7)]

    def submit(engine: Engine, i: int) -> object:
        with torch.no_grad():
            embeds = int4_model.decoder.embed(prompts[i])
        return engine.submit(embeds, prompts[i], options[i], ())

    engine = Engine(int4_model, slots=3)
    gens = [submit(engine, 0), submit(engine, 1)]
    for step in range(60):  # the rest join after 1 and 3 steps; 3 slots for 5 sequences
        if step in (1, 3):
            gens += [submit(engine, len(gens))] + ([submit(engine, 4)] if step == 3 else [])
        engine.step()
        if len(gens) == 5 and all(g.done for g in gens):
            break
    assert all(g.done for g in gens)
    for i, gen in enumerate(gens):
        alone = Engine(int4_model, slots=1)
        solo = submit(alone, i)
        alone.run([solo])
        assert gen.result.tokens == solo.result.tokens and len(solo.result.tokens) > 0, i
        assert gen.result.logprob == pytest.approx(solo.result.logprob, abs=1e-4)


@pytest.mark.parametrize(("preset", "scheme", "group_size", "head", "stated", "head_block"), [
    ("tiny-random", "int8", None, "auto", None, None),
    ("tiny-random", "int8", 16, "auto", 16, None),
    ("tiny-random-v1", "int8", None, "auto", None, None),
    ("tiny-random", "int4", None, "auto", 32, "lalm_int8"),  # int4 layers, int8 head
    ("tiny-random", "int4", 64, "int4", 64, None),
    ("tiny-random", "int4", 32, None, 32, None),
    ("tiny-random-v1", "int4", 64, "auto", 64, "lalm_int8"),
    ("tiny-random", "int8", None, "int4", None, "lalm_int4"),
])
def test_saved_quantised_checkpoint_loads_with_identical_logits(
        preset, scheme, group_size, head, stated, head_block, tmp_path) -> None:
    model = random_model(preset, seed=4)
    quantize_model(model, scheme, lm_head=head, group_size=group_size)
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    block = config[QUANT_KEY]
    assert block["quant_method"] == f"lalm_{scheme}" and block["group_size"] == stated
    assert block["bits"] == int(scheme[3:]) and block["symmetric"] is (scheme == "int8")
    assert ("decoder.lm_head" in block["modules"]) is (head is not None)
    assert block.get("lm_head", {}).get("quant_method") == head_block
    loaded = load_model(tmp_path)
    # a saved quantised folder loads as saved whatever the precision asks
    again = load_model(tmp_path, "int8" if scheme == "int4" else "int4")
    for name in ("layers.1.attn.v", "lm_head"):
        theirs = model.decoder.get_submodule(name)
        for ours in (loaded.decoder.get_submodule(name), again.decoder.get_submodule(name)):
            assert type(ours) is type(theirs) and getattr(ours, "group_size", 0) == getattr(
                theirs, "group_size", 0), name
    ids = _ids(5)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def _saved(tmp_path: Path, scheme: str = "int8") -> tuple[dict[str, torch.Tensor], dict]:
    model = random_model("tiny-random", seed=4)
    quantize_model(model, scheme)
    save_model(model, tmp_path)
    return load_file(tmp_path / "model.safetensors"), json.loads(
        (tmp_path / "config.json").read_text())


def _rewrite(tmp_path: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))


SCALE = "language_model.model.layers.0.self_attn.q_proj.weight_scale"
WEIGHT = "language_model.model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t, c: c.pop(QUANT_KEY), "no quantization_config"),
    (lambda t, c: c[QUANT_KEY].update(quant_method="gptq"), "'gptq' is not one of lalm's"),
    (lambda t, c: c[QUANT_KEY].update(bits=4), "lalm_int8 is 8-bit"),
    (lambda t, c: c[QUANT_KEY].update(group_size=0), "group_size must be"),
    (lambda t, c: c[QUANT_KEY].update(modules=["decoder.lm_head"]), "modules must be"),
    (lambda t, c: t.pop(SCALE), "missing"),
    (lambda t, c: t.update({WEIGHT: t[WEIGHT].float()}), "wrong dtype"),
    (lambda t, c: t.update({SCALE: t[SCALE].to(torch.int32)}), "scales must be float"),
])
def test_inconsistent_int8_checkpoints_raise(edit, message, tmp_path) -> None:
    tensors, config = _saved(tmp_path)
    edit(tensors, config)
    _rewrite(tmp_path, tensors, config)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


ZERO = "language_model.model.layers.0.self_attn.q_proj.weight_zero"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t, c: c[QUANT_KEY].update(symmetric=True), "lalm_int4 is 4-bit"),
    (lambda t, c: c[QUANT_KEY].update(group_size=None), "group_size must be a positive"),
    (lambda t, c: t.pop(ZERO), "missing"),
    (lambda t, c: t.update({WEIGHT: t[WEIGHT].to(torch.int8)}), "wrong dtype"),
    (lambda t, c: t.update({ZERO: t[ZERO].to(torch.int32)}), "zeros must be float"),
    (lambda t, c: (c.pop(QUANT_KEY), t.pop(SCALE)), "scales/zeros .* but no"),
    (lambda t, c: c[QUANT_KEY]["lm_head"].update(group_size=64), "default group size"),
    (lambda t, c: c[QUANT_KEY]["lm_head"].update(quant_method="lalm_int4", bits=4,
                                                 symmetric=False, group_size=32),
     "other scheme"),
    (lambda t, c: c[QUANT_KEY]["lm_head"].update(bits=4), "lm_head: lalm_int8 is 8-bit"),
    (lambda t, c: c[QUANT_KEY]["modules"].pop(), "not in modules"),
])
def test_inconsistent_int4_checkpoints_raise(edit, message, tmp_path) -> None:
    tensors, config = _saved(tmp_path, "int4")
    edit(tensors, config)
    _rewrite(tmp_path, tensors, config)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_a_model_the_block_cannot_state_is_not_saved(tmp_path) -> None:
    model = random_model("tiny-random", seed=4)
    quantize_model(model, "int8")
    layer = model.decoder.layers[0].attn
    layer.q = Int4Linear.from_linear(torch.nn.Linear(64, 64), 32)  # one int4 layer among int8
    with pytest.raises(CheckpointError, match="one scheme"):
        save_model(model, tmp_path / "mixed")
    model = random_model("tiny-random", seed=4)
    quantize_model(model, "int4", lm_head=None)
    model.decoder.lm_head = Int8Linear.from_linear(torch.nn.Linear(64, 512), group_size=16)
    with pytest.raises(CheckpointError, match="default group size"):
        save_model(model, tmp_path / "head")
    assert not (tmp_path / "mixed").exists() or not any((tmp_path / "mixed").iterdir())
