"""Training checkpoints run no code, corruption is found before it is read, and a non-finite loss
stops the run (issue 13.2, 13.3): real tiny runs, real files, a real malicious pickle."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from lalm.errors import CheckpointError, TrainingError
from lalm.testing.models import random_model
from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer
from lalm.training import TrainConfig, train
from lalm.training.distributed import DistInfo
from lalm.training.optim import build_optimizer, build_scheduler
from lalm.training.stages import OptimConfig
from lalm.training.state import TrainerState, list_checkpoints, save_checkpoint


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tone_dataset(tmp_path_factory.mktemp("tones"), 2)


@pytest.fixture(scope="module")
def tokenizer_dir(tones, tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), tones)


def _config(tones, tokenizer_dir, tmp_path, optim=None, **run) -> TrainConfig:
    return TrainConfig.from_dict(tiny_stage(
        tmp_path / "run", tones, tokenizer_dir, len(load_tokenizer(tokenizer_dir)),
        optim={"lr": 3e-3, "warmup_steps": 1, **(optim or {})},
        run={"max_steps": 4, "save_every": 2, "keep_last": 2, **run}))


class _Planted:
    """Unpickling this creates `marker`: what an attacker's file in a run folder would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _reseal(folder, name) -> None:
    """Rewrite the manifest's entry of `name` to match the file (an attacker can do that too)."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return
    data = json.loads(manifest.read_text())
    if name in data["files"]:
        data["files"][name] = {"bytes": (folder / name).stat().st_size,
                               "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
        manifest.write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["model.pt", "optimizer.pt", "trainer.pt", "rng-rank0.pt"])
def test_resume_runs_no_code_planted_in_a_run_folder(name, tones, tokenizer_dir, tmp_path):
    first = train(_config(tones, tokenizer_dir, tmp_path, max_steps=2, save_every=0))
    marker = tmp_path / "pwned"
    torch.save({"state": _Planted(str(marker))}, first.checkpoint / name)
    _reseal(first.checkpoint, name)
    manifest = first.checkpoint / "manifest.json"
    listed = manifest.exists() and name in json.loads(manifest.read_text())["files"]
    try:
        result = train(_config(tones, tokenizer_dir, tmp_path, max_steps=3), resume=True)
    except CheckpointError as e:
        assert name in str(e) and "weights_only" in str(e)
        refused = True
    else:
        assert result.step == 3
        refused = False
    assert not marker.exists()
    assert refused == listed  # a file lalm reads is refused; a stray one is never opened


def test_every_checkpoint_file_is_json_or_plain_tensors(tones, tokenizer_dir, tmp_path):
    checkpoint = train(_config(tones, tokenizer_dir, tmp_path, {"warmup_steps": 0},
                                 max_steps=1)).checkpoint
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["manifest.json", "model.pt", "optimizer.pt", "rng-rank0.json",
                     "trainer.json"]
    for path in checkpoint.iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            torch.load(path, weights_only=True)


def test_overwritten_bytes_in_the_newest_checkpoint_fall_back_to_the_older(
        tones, tokenizer_dir, tmp_path):
    train(_config(tones, tokenizer_dir, tmp_path))  # checkpoints of steps 2 and 4
    newest = tmp_path / "run" / "checkpoints" / "step-00000004" / "model.pt"
    with open(newest, "r+b") as f:  # 4 KiB of garbage in the middle of the weights
        f.seek(newest.stat().st_size // 2)
        f.write(np.random.default_rng(0).bytes(4096))
    with pytest.warns(UserWarning, match=r"step-00000004.*model.pt.*sha256.*step-00000002"):
        result = train(_config(tones, tokenizer_dir, tmp_path, max_steps=6), resume=True)
    assert len(result.losses) == 4 and all(math.isfinite(x) for x in result.losses)


def test_truncated_newest_checkpoint_falls_back_and_none_intact_is_an_error(
        tones, tokenizer_dir, tmp_path):
    train(_config(tones, tokenizer_dir, tmp_path))
    folders = list_checkpoints(tmp_path / "run" / "checkpoints")
    optim = folders[-1] / "optimizer.pt"
    os.truncate(optim, optim.stat().st_size // 2)
    with pytest.warns(UserWarning, match=r"optimizer.pt has .* bytes.*truncated"):
        result = train(_config(tones, tokenizer_dir, tmp_path, max_steps=5), resume=True)
    assert len(result.losses) == 3  # steps 3-5, from the step-2 checkpoint
    for folder in list_checkpoints(tmp_path / "run" / "checkpoints"):
        os.truncate(folder / "model.pt", 100)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        train(_config(tones, tokenizer_dir, tmp_path, max_steps=6), resume=True)


def test_a_nonfinite_loss_stops_the_run_before_the_update(tones, tokenizer_dir, tmp_path):
    # lr 1e30: the first AdamW step moves every weight by ~1e30, and the next forward overflows
    config = _config(tones, tokenizer_dir, tmp_path, optim={"lr": 1e30, "warmup_steps": 0},
                     save_every=1)
    with pytest.raises(TrainingError, match=r"step 2: the loss is nan.*on_nonfinite"):
        train(config)
    folders = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [f.name for f in folders] == ["step-00000001"]
    weights = torch.load(folders[0] / "model.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_on_nonfinite_skip_drops_those_steps_and_counts_them(tones, tokenizer_dir, tmp_path):
    config = _config(tones, tokenizer_dir, tmp_path, optim={"lr": 1e30, "warmup_steps": 0},
                     max_steps=3, on_nonfinite="skip")
    result = train(config)
    assert result.step == 3 and result.skipped_steps == 2
    def strict(word: str):
        raise ValueError(f"log.jsonl is not strict JSON: {word}")

    log = [json.loads(x, parse_constant=strict)
           for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "nonfinite_loss" in r] == [2, 3]
    weights = torch.load(result.checkpoint / "model.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_checkpoint_of_nonfinite_weights_is_never_written(tmp_path):
    model = random_model()
    optimizer = build_optimizer(model, OptimConfig())
    scheduler = build_scheduler(optimizer, OptimConfig(), 10)
    with torch.no_grad():
        model.decoder.norm.weight[0] = float("nan")
    with pytest.raises(TrainingError, match="step 3.*no longer finite"):
        save_checkpoint(tmp_path, model, optimizer, scheduler, TrainerState(step=3), {},
                        DistInfo())
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_files_follow_the_umask(tones, tokenizer_dir, tmp_path):
    old = os.umask(0o022)
    try:
        result = train(_config(tones, tokenizer_dir, tmp_path, {"warmup_steps": 0},
                               max_steps=1, export=True))
    finally:
        os.umask(old)
    files = [*result.checkpoint.iterdir(), *result.export_dir.iterdir()]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files if p.is_file()}
    assert modes and all(mode == 0o644 for mode in modes.values()), modes
