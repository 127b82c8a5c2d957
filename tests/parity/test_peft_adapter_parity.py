"""lalm with LoRA vs transformers + PEFT on lalm's export of the base and its PEFT adapter.

A tiny random model gets adapters on every part (non-zero B, so the update shows), the base is
exported in the Qwen2-Audio HF layout and the adapters in PEFT's format; PEFT's own loader must
then compute lalm's decoder logits and audio rows (fp32, 1e-5 relative). The folder also loads
back into lalm, and a PEFT-written adapter loads into lalm.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lalm.checkpoint import save_model  # noqa: E402
from lalm.errors import CheckpointError  # noqa: E402
from lalm.testing.models import random_features, random_model  # noqa: E402
from lalm.training.build import set_parts  # noqa: E402
from lalm.model.lora import LoRALinear  # noqa: E402
from lalm.checkpoint.peft import (  # noqa: E402
    AUDIO_ADAPTER,
    CONFIG_FILE,
    load_peft_adapter,
    save_peft_adapter,
)
from lalm.training.stages import LoraConfig, PartsConfig  # noqa: E402

pytestmark = pytest.mark.slow  # importing transformers and peft takes seconds
REL = 1e-5
LORA = LoraConfig(rank=4, alpha=12.0)


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (actual - expected).abs().max().item() / expected.abs().max().item()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(lalm model with LoRA, base export folder, adapter folder)."""
    root = tmp_path_factory.mktemp("peft")
    model = random_model("tiny-random", seed=7)
    save_model(model, root / "base")
    set_parts(model, PartsConfig(encoder="lora", projector="lora", decoder="lora"), LORA)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.copy_(0.3 * torch.randn(module.lora_b.shape, generator=gen))
    save_peft_adapter(model.state_dict(), model.config, LORA.alpha, root / "adapter",
                      base_model=str(root / "base"))
    return model.eval(), root / "base", root / "adapter"


@pytest.fixture(scope="module")
def reference(exported):
    _, base, adapter = exported
    hf = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(base)
    return peft.PeftModel.from_pretrained(hf, adapter).eval()


def test_peft_computes_lalms_decoder_logits(exported, reference) -> None:
    model, _, _ = exported
    ids = torch.randint(0, 500, (2, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(ids).logits[:, -1]
        theirs = reference(input_ids=ids).logits[:, -1].float()
        reference.disable_adapter_layers()
        base = reference(input_ids=ids).logits[:, -1].float()
        reference.enable_adapter_layers()
    assert _rel_err(ours, theirs) <= REL
    assert _rel_err(base, theirs) > 1e-3  # the adapters matter: a dropped one would show


def test_peft_computes_lalms_audio_rows(exported, reference) -> None:
    model, _, _ = exported
    features, lens = random_features([180], n_mels=128, seed=3)
    padded = torch.zeros(1, 128, 3000)
    padded[..., : features.shape[-1]] = features
    n = (int(lens[0]) - 1) // 2 + 1
    key_bias = torch.zeros(1, 1, 1, 1500)
    key_bias[..., n:] = torch.finfo(torch.float32).min
    inner = reference.base_model.model.model
    with torch.no_grad():
        theirs = inner.multi_modal_projector(inner.audio_tower(padded, key_bias).last_hidden_state)
        ours = model.embed_audio(features, lens)[0]
    assert _rel_err(ours, theirs[0, : ours.shape[0]]) <= REL


def test_adapter_folder_is_pefts_format(exported) -> None:
    _, _, adapter = exported
    config = json.loads((adapter / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 12.0
    assert "model.language_model.layers.0.self_attn.q_proj" in config["target_modules"]
    assert "model.multi_modal_projector.linear" in config["target_modules"]
    loaded = peft.PeftConfig.from_pretrained(adapter)
    assert loaded.r == 4


def test_peft_adapts_exactly_lalms_layers(exported, reference) -> None:
    model, _, _ = exported
    theirs = sum(name.endswith("lora_A.default") for name, _ in reference.named_modules())
    ours = sum(isinstance(m, LoRALinear) for m in model.modules())
    assert theirs == ours == 27  # 2 x 6 encoder, the projector, 2 x 7 decoder layers


def test_lalm_loads_the_folder_back(exported) -> None:
    model, base, adapter = exported
    from lalm.checkpoint import load_model

    fresh = load_model(base, dtype="fp32")
    names = load_peft_adapter(fresh, adapter)
    assert "decoder.layers.1.mlp.down" in names and "projector.proj" in names
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(ids).logits, model(ids).logits)


def test_lalm_loads_an_adapter_peft_wrote(exported, tmp_path) -> None:
    _, base, _ = exported
    hf = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(base)
    config = peft.LoraConfig(r=2, lora_alpha=5, target_modules=["q_proj", "down_proj"])
    wrapped = peft.get_peft_model(hf, config)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    wrapped.save_pretrained(tmp_path / "theirs")
    from lalm.checkpoint import load_model

    ours = load_model(base, dtype="fp32")
    names = load_peft_adapter(ours, tmp_path / "theirs")
    assert "encoder.blocks.0.attn.query" in names and "decoder.layers.0.mlp.down" in names
    ids = torch.arange(5, 30)[None]
    with torch.no_grad():
        theirs = wrapped.eval()(input_ids=ids).logits[:, -1]
        assert _rel_err(ours.eval()(ids).logits[:, -1], theirs) <= REL


def test_unsupported_variants_are_refused(exported, tmp_path) -> None:
    model, base, adapter = exported
    from lalm.checkpoint import load_model

    (tmp_path / CONFIG_FILE).write_text(json.dumps(
        {**json.loads((adapter / CONFIG_FILE).read_text()), "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora"):
        load_peft_adapter(load_model(base, dtype="fp32"), tmp_path)
    v1 = random_model("tiny-random-v1")
    with pytest.raises(CheckpointError, match="v1"):
        save_peft_adapter(model.state_dict(), v1.config, 1.0, tmp_path / "v1")


def test_a_lora_stage_writes_its_adapter(tmp_path) -> None:
    """`lalm train` with LoRA only: ``adapter/`` on the starting weights is the merged export."""
    from lalm.checkpoint import load_model
    from lalm.config import ModelConfig
    from lalm.model import AudioLanguageModel
    from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
    from lalm.tokenizer import load_tokenizer
    from lalm.training import TrainConfig, train
    from lalm.training.build import init_weights

    manifest = write_tone_dataset(tmp_path / "tones", 1)
    tokenizer = write_tiny_tokenizer(tmp_path / "tok", manifest)
    stage = tiny_stage(tmp_path / "run", manifest, tokenizer, len(load_tokenizer(tokenizer)),
                       parts={"encoder": "frozen", "projector": "lora", "decoder": "lora"},
                       optim={"lr": 1e-2, "warmup_steps": 0},
                       run={"max_steps": 2, "export": True, "save_every": 1, "keep_last": 3})
    result = train(TrainConfig.from_dict(stage))
    base = AudioLanguageModel(ModelConfig.from_name("tiny-random", **stage["model"]["overrides"]))
    init_weights(base, 0)
    load_peft_adapter(base, tmp_path / "run" / "adapter")
    ids = torch.arange(3, 30)[None]
    with torch.no_grad():
        expected = load_model(result.export_dir).eval()(ids).logits[:, -1]
        assert _rel_err(base.eval()(ids).logits[:, -1], expected) <= REL

    # any step's checkpoint exports the same way (`lalm export`); the last one as the run did
    from lalm.cli import main

    checkpoints = tmp_path / "run" / "checkpoints"
    assert main(["export", str(checkpoints / "step-00000002"), str(tmp_path / "two")]) == 0
    assert main(["export", str(checkpoints / "step-00000001"), str(tmp_path / "one")]) == 0
    final, two, one = (load_model(p).state_dict() for p in (
        result.export_dir, tmp_path / "two" / "export", tmp_path / "one" / "export"))
    assert all(torch.equal(final[k], two[k]) for k in final)
    assert not all(torch.equal(final[k], one[k]) for k in final)
    assert (tmp_path / "one" / "adapter" / CONFIG_FILE).is_file()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "bad")]) == 2  # not a step


def test_transformers4_paths_load_and_unknown_keys_are_named(exported, tmp_path) -> None:
    """An adapter saved from transformers 4 names the on-disk paths (``language_model.model.``,
    ``audio_tower.``): lalm reads it alike; a key of no layer is an error naming it."""
    from safetensors.torch import load_file, save_file

    from lalm.checkpoint import load_model

    model, base, adapter = exported
    v5 = load_file(adapter / "adapter_model.safetensors")
    v4 = {k.replace("base_model.model.model.language_model.", "base_model.model.language_model."
                    "model.").replace("base_model.model.model.", "base_model.model."): t
          for k, t in v5.items()}
    assert "base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight" in v4
    (tmp_path / "v4").mkdir()
    shutil.copy(adapter / CONFIG_FILE, tmp_path / "v4")
    save_file(v4, tmp_path / "v4" / "adapter_model.safetensors")
    fresh = load_model(base, dtype="fp32")
    load_peft_adapter(fresh, tmp_path / "v4")
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(ids).logits, model(ids).logits)
    (tmp_path / "bad").mkdir()
    shutil.copy(adapter / CONFIG_FILE, tmp_path / "bad")
    save_file({"base_model.model.model.nowhere.lora_A.weight": torch.zeros(4, 4)},
              tmp_path / "bad" / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="nowhere"):
        load_peft_adapter(load_model(base, dtype="fp32"), tmp_path / "bad")


def test_peft_computes_a_gated_models_rows_from_its_checkpoint(tmp_path) -> None:
    """A model whose decoder adapters act on audio only saves as its base plus AUDIO_ADAPTER:
    PEFT with the adapter computes lalm's rows holding audio, PEFT without it the text rows."""
    model = random_model("tiny-random", seed=7)
    set_parts(model, PartsConfig(encoder="frozen", projector="frozen", decoder="lora"),
              LoraConfig(rank=4, alpha=12.0, applies_to="audio"))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.copy_(0.3 * torch.randn(module.lora_b.shape, generator=gen))
    model.eval()
    save_model(model, tmp_path)
    hf = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path)
    reference = peft.PeftModel.from_pretrained(hf, tmp_path / AUDIO_ADAPTER).eval()
    features, lens = random_features([60], n_mels=128, seed=3)
    slot = 9
    n = int(model.audio_row_counts(lens))
    ids = torch.tensor([[5, 6, *[slot] * n, 7, 8]])
    text = torch.arange(5, 30)[None]
    with torch.no_grad():
        ours_audio = model(ids, features, lens, ids == slot).logits[:, -1]
        embeds = model.embed_prompt(ids, model.embed_audio(features, lens), ids == slot)
        theirs_audio = reference(inputs_embeds=embeds).logits[:, -1].float()
        ours_text = model(text).logits[:, -1]
        adapted_text = reference(input_ids=text).logits[:, -1].float()
        with reference.disable_adapter():
            theirs_text = reference(input_ids=text).logits[:, -1].float()
    assert _rel_err(ours_audio, theirs_audio) <= REL
    assert _rel_err(ours_text, theirs_text) <= REL
    assert _rel_err(adapted_text, theirs_text) > 1e-3  # the adapter acts where it is on
