"""Checkpoint I/O without transformers: key map round trips, config translation, save/load,
sharding, and the errors for broken directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lalm.checkpoint import load_config, load_model, save_model
from lalm.checkpoint import qwen2_audio
from lalm.checkpoint.safetensors_io import read_checkpoint_dir
from lalm.config import ModelConfig
from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel
from lalm.testing.models import random_model

# The published Qwen/Qwen2-Audio-7B-Instruct config.json: fields equal to transformers'
# defaults are left out (hidden_size 4096, 32 layers and heads, ...).
PUBLISHED_CONFIG = {
    "architectures": ["Qwen2AudioForConditionalGeneration"],
    "audio_config": {"model_type": "qwen2_audio_encoder"},
    "audio_token_index": 151646,
    "ignore_index": -100,
    "model_type": "qwen2_audio",
    "text_config": {
        "bos_token_id": 151643, "eos_token_id": 151645, "intermediate_size": 11008,
        "max_position_embeddings": 8192, "model_type": "qwen2", "rms_norm_eps": 1e-05,
        "rope_theta": 10000, "sliding_window": 8192, "torch_dtype": "bfloat16",
        "use_mrope": False, "vocab_size": 156032,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
}


@pytest.fixture(scope="module")
def model() -> AudioLanguageModel:
    return random_model("tiny-random", seed=5)


@pytest.fixture
def saved(model, tmp_path) -> Path:
    save_model(model, tmp_path)
    return tmp_path


def test_published_config_translates_to_the_preset() -> None:
    config = qwen2_audio.config_from_hf(PUBLISHED_CONFIG)
    assert config == ModelConfig.from_name("qwen2-audio-7b")
    assert qwen2_audio.config_from_hf(qwen2_audio.config_to_hf(config)) == config


def test_transformers5_rope_parameters_are_read() -> None:
    hf = qwen2_audio.config_to_hf(ModelConfig.from_name("tiny-random"))
    del hf["text_config"]["rope_theta"]
    hf["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6}
    assert qwen2_audio.config_from_hf(hf).decoder.rope_theta == 1e6
    hf["text_config"]["rope_parameters"]["rope_type"] = "yarn"
    with pytest.raises(CheckpointError, match="rope type"):
        qwen2_audio.config_from_hf(hf)


def test_v1_switches_cannot_be_written_as_qwen2_audio() -> None:
    with pytest.raises(CheckpointError, match="audio_bos_eos"):
        qwen2_audio.config_to_hf(ModelConfig.from_name("tiny-random-v1"))


def test_key_map_round_trip_covers_every_parameter() -> None:
    with torch.device("meta"):
        state = AudioLanguageModel(ModelConfig.from_name("qwen2-audio-7b")).state_dict()
    hf = qwen2_audio.from_lalm(state)
    assert "audio_tower.layers.31.self_attn.k_proj.weight" in hf
    assert "language_model.lm_head.weight" in hf
    assert "audio_tower.embed_positions.weight" in hf
    back = qwen2_audio.to_lalm(hf)
    assert list(back) == list(state)
    assert all(back[name] is state[name] for name in state)


def test_transformers5_in_memory_names_are_accepted() -> None:
    v5 = {"model.audio_tower.conv1.weight": 1,
          "model.language_model.layers.3.mlp.up_proj.weight": 2,
          "model.multi_modal_projector.linear.bias": 3, "lm_head.weight": 4}
    assert qwen2_audio.to_lalm(v5) == {
        "encoder.conv1.weight": 1, "decoder.layers.3.mlp.up.weight": 2,
        "projector.proj.bias": 3, "decoder.lm_head.weight": 4,
    }
    with pytest.raises(CheckpointError, match="audio_tower.whatever"):
        qwen2_audio.to_lalm({"audio_tower.whatever": 0})


@pytest.mark.parametrize("max_shard_bytes", [None, 200_000])
def test_save_load_round_trip(model, tmp_path, max_shard_bytes) -> None:
    written = save_model(model, tmp_path, max_shard_bytes=max_shard_bytes)
    assert written[-1].name == "config.json"
    assert (len(written) > 3) == (max_shard_bytes is not None)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    for (name, a), (other, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == other and torch.equal(a, b), name
    assert not loaded.training


def test_load_casts_once_to_the_requested_dtype(model, tmp_path) -> None:
    save_model(model, tmp_path, dtype=torch.float16)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "float16"
    assert read_checkpoint_dir(tmp_path)["language_model.lm_head.weight"].dtype == torch.float16
    loaded = load_model(tmp_path, dtype="fp32")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    expected = model.decoder.lm_head.weight.half().float()
    assert torch.equal(loaded.decoder.lm_head.weight, expected)


def test_load_config_reads_the_directory(saved, model) -> None:
    config, fmt = load_config(saved)
    assert config == model.config and fmt.name == "qwen2_audio"


def test_missing_config_or_weights(saved, tmp_path) -> None:
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(saved)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(PUBLISHED_CONFIG))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(empty)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")


def test_unknown_model_type(saved) -> None:
    (saved / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="'llama'"):
        load_model(saved)


def _rewrite_weights(directory: Path, edit) -> None:
    tensors = {k: v.clone() for k, v in read_checkpoint_dir(directory).items()}
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_extra_and_misshapen_keys_are_named(saved) -> None:
    def edit(t: dict) -> None:
        del t["language_model.model.norm.weight"]
        t["language_model.model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)

    _rewrite_weights(saved, edit)
    with pytest.raises(CheckpointError) as err:
        load_model(saved)
    assert "decoder.norm.weight" in str(err.value)
    assert "decoder.layers.0.mlp.up.weight: file (3, 3)" in str(err.value)

    _rewrite_weights(saved, lambda t: t.update({"audio_tower.layers.9.fc1.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model(saved)


def test_half_written_file_and_broken_shards(model, tmp_path) -> None:
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    save_model(model, single)
    weights = single / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(single)

    save_model(model, sharded, max_shard_bytes=200_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    moved = next(k for k, v in index["weight_map"].items() if v == first)
    index["weight_map"][moved] = "model-00002-of-00009.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="disagrees"):
        load_model(sharded)
    (sharded / first).unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_model(sharded)
