"""Weight-only int8 (`lalm.model.quant`) and saved int8 checkpoints on tiny random models:
rounding error at the int8 level, the CPU kernel against the dequantised product, logits close
to fp32, batched = single, save -> load -> identical logits, typed errors on bad folders."""

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
from lalm.generation import GenerationOptions, PromptBatch, generate, left_pad
from lalm.model import AudioLanguageModel
from lalm.model.quant import Int8Linear, dequantize_int8, quantize_int8, quantize_model_int8
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
    quantize_model_int8(model)
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
        assert module.uses_int8_kernel() is kernel
        with torch.no_grad():
            y = module(x)
            ref = F.linear(x, dequantize_int8(module.weight, module.scales), linear.bias)
        assert y.shape == (3, 5, 40) and y.dtype == torch.float32
        # the kernel multiplies bf16 activations and scales: ~2^-9 relative
        tolerance = 2e-2 if kernel else 1e-5
        assert float((y - ref).abs().max() / ref.abs().max()) < tolerance


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
    quantize_model_int8(plain)
    quantize_model_int8(laid)
    head = laid.decoder.lm_head
    quantize_model_int8(laid)  # already quantised modules are kept, not re-quantised
    assert laid.decoder.lm_head is head
    for name, tensor in plain.state_dict().items():
        assert torch.equal(laid.state_dict()[name], tensor), name


def test_lm_head_can_stay_float() -> None:
    model = random_model("tiny-random", seed=3)
    quantize_model_int8(model, include_lm_head=False)
    assert type(model.decoder.lm_head) is torch.nn.Linear
    assert isinstance(model.decoder.layers[0].attn.q, Int8Linear)


def test_int8_batched_equals_single_with_left_padding(int8_model) -> None:
    rows = [_ids(1, (1, 4))[0].tolist(), _ids(2, (1, 11))[0].tolist(),
            _ids(3, (1, 7))[0].tolist()]
    options = GenerationOptions(max_new_tokens=8)

    def batch(of: list[list[int]]) -> PromptBatch:
        ids, mask = left_pad(of, pad_id=0)
        return PromptBatch(ids, mask, int8_model.decoder.embed(ids).detach())

    together = generate(int8_model, batch(rows), options, stop_ids=())
    for row, result in zip(rows, together):
        alone = generate(int8_model, batch([row]), options, stop_ids=())[0]
        assert result.tokens == alone.tokens
        assert result.logprob == pytest.approx(alone.logprob, abs=1e-4)


@pytest.mark.parametrize(("preset", "group_size"),
                         [("tiny-random", None), ("tiny-random", 16), ("tiny-random-v1", None)])
def test_saved_int8_checkpoint_loads_with_identical_logits(preset, group_size, tmp_path) -> None:
    model = random_model(preset, seed=4)
    quantize_model_int8(model, group_size=group_size)
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    block = config[QUANT_KEY]
    assert block["quant_method"] == "lalm_int8" and block["group_size"] == group_size
    assert "decoder.lm_head" in block["modules"]
    loaded = load_model(tmp_path)
    assert isinstance(loaded.decoder.layers[1].attn.v, Int8Linear)
    assert loaded.decoder.layers[1].attn.v.group_size == group_size
    ids = _ids(5)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def _saved(tmp_path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    model = random_model("tiny-random", seed=4)
    quantize_model_int8(model)
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
    (lambda t, c: c[QUANT_KEY].update(quant_method="gptq"), "'gptq' is not lalm's"),
    (lambda t, c: c[QUANT_KEY].update(bits=4), "only symmetric 8-bit"),
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
