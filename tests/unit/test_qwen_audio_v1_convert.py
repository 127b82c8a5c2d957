"""Qwen-Audio (v1) checkpoints without the fixture: config translation, the key map (fused
q/k/v, which MLP branch is gated), save/load in the v1 layout, PyTorch .bin shards, and the
errors for configs, tensors and files lalm cannot take."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lalm.checkpoint import load_config, load_model, save_model
from lalm.checkpoint import qwen_audio_v1 as v1
from lalm.checkpoint.safetensors_io import read_checkpoint_dir
from lalm.config import ModelConfig
from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel
from lalm.testing.models import random_model

# The published Qwen/Qwen-Audio config.json (Qwen-Audio-Chat has the same architecture fields).
PUBLISHED_CONFIG = {
    "architectures": ["QWenLMHeadModel"],
    "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                 "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    "attn_dropout_prob": 0.0, "bf16": False, "fp16": False, "fp32": False,
    "emb_dropout_prob": 0.0, "intermediate_size": 22016, "initializer_range": 0.02,
    "kv_channels": 128, "layer_norm_epsilon": 1e-05, "model_type": "qwen", "hidden_size": 4096,
    "num_attention_heads": 32, "num_hidden_layers": 32, "max_position_embeddings": 8192,
    "no_bias": True, "onnx_safe": None, "rotary_emb_base": 10000, "rotary_pct": 1.0,
    "scale_attn_weights": True, "seq_length": 2048, "tie_word_embeddings": False,
    "tokenizer_type": "QWenTokenizer", "transformers_version": "4.31.0", "use_cache": True,
    "vocab_size": 155947, "use_dynamic_ntk": True, "use_logn_attn": True,
    "audio": {"n_mels": 80, "n_ctx": 1500, "n_state": 1280, "n_head": 20, "n_layer": 32,
              "output_dim": 4096, "avg_pool": True, "add_audio_bos_eos_token": True,
              "audio_start_id": 155163},
}


@pytest.fixture(scope="module")
def model() -> AudioLanguageModel:
    return random_model("tiny-random-v1", seed=7)


def _expected_v1_names(n_audio: int, n_llm: int) -> set[str]:
    """Every tensor name of a published v1 checkpoint (README of the v1 fixture, section 2.1)."""
    audio = [f"transformer.audio.{n}" for n in (
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "positional_embedding",
        "ln_post.weight", "ln_post.bias", "proj.weight", "proj.bias",
        "audio_bos_eos_token.weight")]
    audio += [f"transformer.audio.blocks.{j}.{n}" for j in range(n_audio) for n in (
        "attn.query.weight", "attn.query.bias", "attn.key.weight", "attn.value.weight",
        "attn.value.bias", "attn.out.weight", "attn.out.bias", "attn_ln.weight", "attn_ln.bias",
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp_ln.weight",
        "mlp_ln.bias")]
    llm = ["transformer.wte.weight", "transformer.ln_f.weight", "lm_head.weight"]
    llm += [f"transformer.h.{i}.{n}" for i in range(n_llm) for n in (
        "ln_1.weight", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
        "ln_2.weight", "mlp.w1.weight", "mlp.w2.weight", "mlp.c_proj.weight")]
    return {*audio, *llm}


# --- config.json ----------------------------------------------------------------------------

def test_published_config_translates_to_the_preset() -> None:
    config = v1.config_from_hf(PUBLISHED_CONFIG)
    assert config == ModelConfig.from_name("qwen-audio-7b")
    assert config.decoder.hidden_dim == 22016 // 2  # the MLP width is half of intermediate_size
    written = v1.config_to_hf(config, "bfloat16")
    for key in ("hidden_size", "intermediate_size", "kv_channels", "seq_length", "vocab_size",
                "layer_norm_epsilon", "use_dynamic_ntk", "use_logn_attn", "audio"):
        assert written[key] == PUBLISHED_CONFIG[key], key
    assert v1.config_from_hf(written) == config


def test_omitted_fields_take_qwen_config_defaults() -> None:
    sparse = {k: v for k, v in PUBLISHED_CONFIG.items()
              if k not in ("layer_norm_epsilon", "rotary_pct", "kv_channels", "no_bias")}
    assert v1.config_from_hf(sparse).decoder.norm_eps == 1e-6


def _edited(path: str, value: object) -> dict:
    config = copy.deepcopy(PUBLISHED_CONFIG)
    *parents, leaf = path.split(".")
    target = config
    for key in parents:
        target = target[key]
    if value is None:
        del target[leaf]
    else:
        target[leaf] = value
    return config


@pytest.mark.parametrize(("path", "value", "message"), [
    ("rotary_pct", 0.5, "rotary_pct"),
    ("tie_word_embeddings", True, "tie_word_embeddings"),
    ("no_bias", False, "no_bias"),
    ("kv_channels", 64, "kv_channels"),
    ("intermediate_size", 22015, "odd intermediate_size"),
    ("audio.avg_pool", False, "audio.avg_pool"),
    ("audio.add_audio_bos_eos_token", False, "add_audio_bos_eos_token"),
    ("audio.output_dim", 1024, "audio.output_dim"),
    ("audio.audio_start_id", 151851, "audio_start_id"),
    ("audio.n_mels", None, "audio.n_mels"),
    ("seq_length", None, "seq_length"),
    ("audio", None, "text-only"),
    ("audio.n_head", 3, "encoder.dim.*divisible"),
])
def test_bad_configs_name_the_field(path: str, value: object, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        v1.config_from_hf(_edited(path, value), "ckpt/config.json")


def test_configs_v1_cannot_express_are_refused() -> None:
    qwen2 = ModelConfig.from_name("tiny-random")  # grouped kv heads, no BOS/EOS rows, lookahead
    with pytest.raises(CheckpointError, match="n_kv_head.*audio_bos_eos.*frame_cutoff"):
        v1.config_to_hf(qwen2)


# --- key map ---------------------------------------------------------------------------------

def test_key_map_covers_every_parameter_and_round_trips(model) -> None:
    state = model.state_dict()
    foreign = v1.from_lalm(state)
    cfg = model.config
    assert set(foreign) == _expected_v1_names(cfg.encoder.n_layer, cfg.decoder.n_layer)
    dim = cfg.decoder.dim
    assert foreign["transformer.h.1.attn.c_attn.weight"].shape == (3 * dim, dim)
    assert foreign["transformer.h.1.mlp.w1.weight"].shape == (cfg.decoder.hidden_dim, dim)
    assert foreign["transformer.audio.audio_bos_eos_token.weight"].shape == (2, dim)
    back = v1.to_lalm(foreign)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_fused_qkv_splits_in_order_and_w2_is_the_gate(model) -> None:
    """The reference computes `c_attn(x).split(hidden)` and `c_proj(w1(x) * silu(w2(x)))`."""
    foreign = v1.from_lalm(model.state_dict())
    layer = model.decoder.layers[1]
    x = torch.randn(3, model.config.decoder.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fused = F.linear(x, foreign["transformer.h.1.attn.c_attn.weight"],
                         foreign["transformer.h.1.attn.c_attn.bias"])
        q, k, v = fused.chunk(3, dim=-1)
        torch.testing.assert_close(q, layer.attn.q(x), rtol=0, atol=0)
        torch.testing.assert_close(k, layer.attn.k(x), rtol=0, atol=0)
        torch.testing.assert_close(v, layer.attn.v(x), rtol=0, atol=0)
        w1, w2, c_proj = (foreign[f"transformer.h.1.mlp.{n}.weight"]
                          for n in ("w1", "w2", "c_proj"))
        reference = F.linear(F.linear(x, w1) * F.silu(F.linear(x, w2)), c_proj)
        torch.testing.assert_close(layer.mlp(x), reference, rtol=1e-6, atol=1e-7)


def test_bad_fused_tensors_and_unknown_keys() -> None:
    with pytest.raises(CheckpointError, match=r"c_attn.weight \(95, 32\) does not split"):
        v1.to_lalm({"transformer.h.0.attn.c_attn.weight": torch.zeros(95, 32)})
    with pytest.raises(CheckpointError, match="unexpected"):
        v1.to_lalm({"transformer.h.0.attn.rotary.inv_freq": torch.zeros(4)})
    with pytest.raises(CheckpointError, match=r"have parts \['k', 'q'\]"):
        v1.join_fused({"transformer.h.0.attn.c_attn.bias[q]": torch.zeros(2),
                       "transformer.h.0.attn.c_attn.bias[k]": torch.zeros(2)})


# --- directories: safetensors, .bin shards, errors ---------------------------------------------

def _assert_same_weights(loaded: AudioLanguageModel, model: AudioLanguageModel) -> None:
    expected = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("max_shard_bytes", [None, 60_000])
def test_save_and_load_in_the_v1_layout(model, tmp_path, max_shard_bytes) -> None:
    # no format given: a v1 model (learned audio BOS/EOS rows) is saved in its own family's layout
    save_model(model, tmp_path, max_shard_bytes=max_shard_bytes)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "qwen" and written["audio"]["n_mels"] == 80
    assert set(read_checkpoint_dir(tmp_path)) == _expected_v1_names(2, 2)
    config, fmt = load_config(tmp_path)
    assert fmt.name == "qwen_audio_v1" and config == model.config
    _assert_same_weights(load_model(tmp_path), model)


def _write_bin_shards(model: AudioLanguageModel, directory: Path, n_shards: int) -> list[Path]:
    """The layout `save_pretrained(safe_serialization=False)` writes: .bin shards + index."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(v1.config_to_hf(model.config)))
    state = v1.from_lalm(model.state_dict())
    names = sorted(state)
    paths, weight_map = [], {}
    for i in range(n_shards):
        path = directory / f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        shard = {n: state[n].clone() for n in names[i::n_shards]}
        torch.save(shard, path)
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    return paths


def test_pytorch_bin_shards_load(model, tmp_path) -> None:
    _write_bin_shards(model, tmp_path / "bin", n_shards=3)
    _assert_same_weights(load_model(tmp_path / "bin"), model)


def test_truncated_or_missing_bin_shard_names_the_file(model, tmp_path) -> None:
    shards = _write_bin_shards(model, tmp_path / "bin", n_shards=3)
    shards[1].write_bytes(shards[1].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"cannot read .*{shards[1].name}.*truncated"):
        load_model(tmp_path / "bin")
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=f"not found: .*{shards[1].name}"):
        load_model(tmp_path / "bin")


RAN: list[str] = []


def _run_code() -> None:
    RAN.append("code in the pickle ran")


class _Payload:
    """Unpickling this calls `_run_code`: a stand-in for code hidden in a malicious .bin."""

    def __reduce__(self) -> tuple:
        return (_run_code, ())


def test_bin_files_are_loaded_without_running_code(model, tmp_path) -> None:
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(v1.config_to_hf(model.config)))
    torch.save({"lm_head.weight": torch.zeros(2), "extra": _Payload()},
               directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read .*pytorch_model.bin"):
        load_model(directory)
    assert RAN == []
