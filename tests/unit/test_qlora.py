"""QLoRA-style training (``lora.base_precision: int8``, `lalm.training.qlora`): the int8 base
gives the gradients of its dequantised weight, a run trains and its loss falls, and the saved
PEFT adapter applies to the full-precision base."""

from __future__ import annotations

import pytest
import torch

from lalm.errors import ConfigError
from lalm.model.quant import Int8Linear, dequantize_int8
from lalm.testing.training import tiny_config, write_tiny_tokenizer, write_tone_dataset
from lalm.training import train
from lalm.training.build import build_model, load_stage_tokenizer
from lalm.checkpoint.peft import load_peft_adapter
from lalm.model.lora import LoRALinear, merge_lora
from lalm.training.qlora import Int8LoRALinear

LORA_ONLY = {"encoder": "frozen", "projector": "frozen", "decoder": "lora"}


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tone_dataset(tmp_path_factory.mktemp("tones"), 1)


@pytest.fixture(scope="module")
def tokenizer_dir(tones, tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), tones)


def _config(tones, tokenizer_dir, out_dir, precision="int8", **sections):
    return tiny_config(out_dir, tones, tokenizer_dir, parts=LORA_ONLY,
                       lora={"base_precision": precision}, **sections)


def test_the_int8_layer_backpropagates_through_its_dequantised_weight():
    torch.manual_seed(0)
    lora = LoRALinear.from_linear(torch.nn.Linear(32, 16), rank=4, alpha=8.0)
    torch.nn.init.normal_(lora.lora_b)  # a live update
    layer = Int8LoRALinear.from_lora(lora)
    assert isinstance(layer.base, Int8Linear) and layer.base.weight.dtype == torch.int8
    assert layer.lora_a is lora.lora_a and layer.bias is lora.bias  # shared, not copied
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_a", "lora_b"}
    # the reference: the same layer with the dequantised int8 weight as a plain float weight
    reference = LoRALinear.from_linear(torch.nn.Linear(32, 16), rank=4, alpha=8.0)
    with torch.no_grad():
        reference.weight.copy_(dequantize_int8(layer.base.weight, layer.base.scales))
        reference.bias.copy_(lora.bias)
        reference.lora_a.copy_(lora.lora_a)
        reference.lora_b.copy_(lora.lora_b)
    x = torch.randn(5, 32)
    grads = []
    for module in (layer, reference):
        xin = x.clone().requires_grad_(True)
        out = module(xin)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        grads.append((out.detach(), xin.grad, module.lora_a.grad.clone(),
                      module.lora_b.grad.clone()))
        module.zero_grad()
    # the int8 kernel multiplies bf16 activations (lalm.model.quant): ~2^-9 relative
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)
    merged = layer.merged_weight()
    torch.testing.assert_close(merged, reference.merged_weight(), rtol=1e-6, atol=1e-6)


def test_a_qlora_run_trains_and_its_adapter_loads_on_the_full_precision_base(
        tones, tokenizer_dir, tmp_path):
    config = _config(tones, tokenizer_dir, tmp_path / "run",
                     optim={"lr": 1e-2, "warmup_steps": 1},
                     run={"max_steps": 8, "save_every": 0, "export": True})
    result = train(config)
    # measured: 5.72 -> 5.10, within 0.003 of the same run with a full-precision base
    assert result.losses[-1] < result.losses[0] - 0.4
    assert all(b < a + 0.05 for a, b in zip(result.losses, result.losses[1:]))
    saved = torch.load(result.checkpoint / "model.pt", weights_only=True)
    assert saved["decoder.layers.0.attn.q.base.weight"].dtype == torch.int8
    assert "decoder.layers.0.attn.q.weight" not in saved  # no full-precision base stored
    assert result.trainable_params == sum(v.numel() for k, v in saved.items()
                                          if k.endswith((".lora_a", ".lora_b")))

    # the full-precision starting model: the preset's weights of model.init_seed; its fresh
    # adapters start with lora_b = 0, so merging them gives the plain base
    tokenizer = load_stage_tokenizer(config)
    plain = build_model(_config(tones, tokenizer_dir, tmp_path / "full", precision="model"),
                        tokenizer)
    merge_lora(plain)
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        before = plain.eval()(ids).logits
    load_peft_adapter(plain, tmp_path / "run" / "adapter")
    trained = build_model(config, tokenizer)
    trained.load_state_dict(saved)
    with torch.no_grad():
        adapted, qlora = plain(ids).logits, trained.eval()(ids).logits
    moved = (adapted - before).abs().max()
    assert moved > 1e-2  # the adapter changes the full-precision model's output ...
    assert (adapted - qlora).abs().max() < 0.1 * moved  # ... as it changed the int8 one


def test_int8_base_needs_a_lora_decoder_with_every_linear_adapted(tones, tokenizer_dir,
                                                                  tmp_path):
    with pytest.raises(ConfigError, match="needs parts.decoder: lora"):
        tiny_config(tmp_path, tones, tokenizer_dir, lora={"base_precision": "int8"})
    config = tiny_config(tmp_path, tones, tokenizer_dir, parts=LORA_ONLY,
                         lora={"base_precision": "int8", "targets": ["attn.q"]})
    with pytest.raises(ConfigError, match=r"decoder.layers.0.attn.k has none"):
        build_model(config, load_stage_tokenizer(config))
