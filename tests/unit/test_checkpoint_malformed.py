"""Broken checkpoint directories, each built from a tiny valid one: every defect is a
`CheckpointError` naming the file and the field, never an untyped traceback, and a shard index
cannot reach outside its folder (issue 13.6, 13.7)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lalm.checkpoint import load_model, save_model
from lalm.checkpoint.safetensors_io import INDEX_FILE, SINGLE_FILE
from lalm.errors import CheckpointError
from lalm.testing.models import random_model

SHARD = "model-00001-of-00001.safetensors"


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, Path]:
    """A tiny valid checkpoint per family (saved by lalm, read by transformers as well)."""
    root = tmp_path_factory.mktemp("valid")
    out = {}
    for family, preset in (("qwen2", "tiny-random"), ("v1", "tiny-random-v1")):
        save_model(random_model(preset, seed=1), root / family)
        out[family] = root / family
    return out


def _config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        change(config)
        (folder / "config.json").write_text(json.dumps(config))
    return mutate


def _set(path: str, value: object) -> Callable[[Path], None]:
    """Set a field of config.json ("text_config.hidden_size" or "hidden_size")."""
    *parents, key = path.split(".")

    def change(config: dict) -> None:
        for parent in parents:
            config = config[parent]
        config[key] = value
    return _config(change)


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data)


def _index(index: object) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        (folder / SINGLE_FILE).rename(folder / SHARD)
        data = index if isinstance(index, bytes) else \
            (index if isinstance(index, str) else json.dumps(index)).encode()
        (folder / INDEX_FILE).write_bytes(data)
    return mutate


def _int32_weight(folder: Path) -> None:
    tensors = load_file(folder / SINGLE_FILE)
    name = sorted(tensors)[-1]
    tensors[name] = (tensors[name] * 100).to(torch.int32)
    save_file(tensors, folder / SINGLE_FILE, metadata={"format": "pt"})


DEEP = ('{"a": ' * 50_000 + "1" + "}" * 50_000).encode()
# (family, mutation, what the message must say)
CASES = {
    "config-invalid-utf8": ("qwen2", _write("config.json", b'{"model_type": "qwen2\xff"}'),
                            r"config\.json is not UTF-8"),
    "config-deep-nesting": ("qwen2", _write("config.json", DEEP),
                            r"config\.json is nested too deeply"),
    "size-as-string": ("qwen2", _set("text_config.hidden_size", "64"),
                       r'config\.json: text_config\.hidden_size must be an integer, got "64"'),
    "size-null": ("qwen2", _set("text_config.num_hidden_layers", None),
                  r"text_config\.num_hidden_layers must be an integer, got null"),
    "audio-size-as-string": ("qwen2", _set("audio_config.d_model", "64"),
                             r"audio_config\.d_model must be an integer"),
    "eps-as-string": ("qwen2", _set("text_config.rms_norm_eps", "small"),
                      r"text_config\.rms_norm_eps must be a finite number"),
    "theta-null": ("qwen2", _set("text_config.rope_theta", None),
                   r"text_config\.rope_theta must be a finite number, got null"),
    "text-config-list": ("qwen2", _set("text_config", [1, 2]),
                         r"config\.json: text_config must be a JSON object, got list"),
    "audio-config-string": ("qwen2", _set("audio_config", "whisper"),
                            r"audio_config must be a JSON object, got str"),
    "rope-scaling-list": ("qwen2", _set("text_config.rope_scaling", [1]),
                          r"text_config\.rope_scaling must be a JSON object"),
    "v1-size-as-string": ("v1", _set("hidden_size", "64"),
                          r"config\.json: hidden_size must be an integer"),
    "v1-audio-size-null": ("v1", _set("audio.n_state", None),
                           r"config\.json: audio\.n_state must be an integer, got null"),
    "index-not-json": ("qwen2", _index("{not json"), r"index\.json is not valid JSON"),
    "index-invalid-utf8": ("qwen2", _index(b'{"weight_map": {"\xff": "x"}}'),
                           r"index\.json is not UTF-8"),
    "index-a-list": ("qwen2", _index([1, 2]), r"index\.json is not a valid shard index"),
    "index-map-a-list": ("qwen2", _index({"weight_map": ["a"]}), r"not a valid shard index"),
    "index-shard-an-int": ("qwen2", _index({"weight_map": {"a": 5}}), r"not a valid shard index"),
    "index-deep-nesting": ("qwen2", _index(DEEP.decode()), r"index\.json is nested too deeply"),
    "index-outside-the-folder": ("qwen2", _index({"weight_map": {"a": "../../x.safetensors"}}),
                                 r"shard name '\.\./\.\./x\.safetensors' is not a file inside"),
    "index-absolute-path": ("qwen2", _index({"weight_map": {"a": "/etc/x.safetensors"}}),
                            r"shard name '/etc/x\.safetensors' is not a file inside"),
    "int32-weight": ("qwen2", _int32_weight, r"not floating point \(1\): \['.*: file torch\.int32"),
    "v1-int32-weight": ("v1", _int32_weight, r"file torch\.int32 vs model torch\.float32"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_checkpoints_are_typed_errors_naming_the_file(case, valid, tmp_path):
    family, mutate, pattern = CASES[case]
    folder = tmp_path / "ckpt"
    shutil.copytree(valid[family], folder)
    mutate(folder)
    with pytest.raises(CheckpointError) as caught:
        load_model(folder)
    assert str(folder) in str(caught.value)
    assert caught.match(pattern)


def test_an_index_cannot_load_weights_from_outside_its_folder(valid, tmp_path):
    # the weights are real and readable, one folder up: an index naming them is refused
    folder = tmp_path / "ckpt"
    shutil.copytree(valid["qwen2"], folder)
    tensors = load_file(folder / SINGLE_FILE)
    (folder / SINGLE_FILE).replace(tmp_path / "x.safetensors")
    (folder / INDEX_FILE).write_text(json.dumps(
        {"weight_map": dict.fromkeys(tensors, "../x.safetensors")}))
    with pytest.raises(CheckpointError, match="is not a file inside the checkpoint folder"):
        load_model(folder)


def test_symlinked_shards_inside_the_folder_are_followed(valid, tmp_path):
    # the Hugging Face cache: snapshot files are links to ../../blobs; the folder's owner made
    # them, so they load (only names in the index are confined to the folder)
    folder, blobs = tmp_path / "snapshots" / "abc", tmp_path / "blobs"
    shutil.copytree(valid["qwen2"], folder)
    blobs.mkdir()
    (folder / SINGLE_FILE).replace(blobs / "sha")
    os.symlink("../../blobs/sha", folder / SHARD)
    tensors = load_file(blobs / "sha")
    (folder / INDEX_FILE).write_text(json.dumps({"weight_map": dict.fromkeys(tensors, SHARD)}))
    model = load_model(folder)
    assert torch.equal(model.decoder.embed.weight,
                       load_model(valid["qwen2"]).decoder.embed.weight)


@pytest.mark.parametrize("config,pattern", [
    (b'{"model_type": "whisper\xff"}', r"config\.json is not UTF-8"),
    (b'{"model_type": "whisper", "d_model": "384"}',
     r'config\.json: d_model must be an integer, got "384"'),
    (b"[1, 2]", r"config\.json: missing, or not a JSON object"),
])
def test_whisper_encoder_configs_are_read_as_untrusted_input(tmp_path, config, pattern):
    from lalm.checkpoint.whisper import read_hf

    (tmp_path / "config.json").write_bytes(config)
    with pytest.raises(CheckpointError, match=pattern):
        read_hf(tmp_path)
