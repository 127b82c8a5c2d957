"""Kill a real `lalm train` process with SIGKILL mid-run, resume it, and get bit-identical
weights (and optimizer state) to an uninterrupted run, and the same log (no step twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
STEPS = 12  # tiny steps: the kill lands at some step after the step-2 checkpoint


def _config(tmp_path: Path, name: str, manifest: Path, tokenizer: Path) -> Path:
    stage = tiny_stage(tmp_path / name, manifest, tokenizer, len(load_tokenizer(tokenizer)),
                       data={"max_items": 2},
                       run={"max_steps": STEPS, "save_every": 2, "keep_last": 10})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(stage))
    return path


def _train(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lalm", "train", str(config), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    manifest = write_tone_dataset(tmp_path / "data", 5)
    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer", manifest)  # not about the tokenizer
    straight = _config(tmp_path, "straight", manifest, tokenizer)
    killed = _config(tmp_path, "killed", manifest, tokenizer)

    proc = _train(killed)
    marker = tmp_path / "killed" / "checkpoints" / "step-00000002"
    deadline = time.monotonic() + 240
    while not marker.exists():  # kill after the step-2 checkpoint, before the end
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "checkpoints" / f"step-{STEPS:08d}").exists()

    for p in (_train(killed, "--resume"), _train(straight)):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()

    final = f"checkpoints/step-{STEPS:08d}"
    for name in ("model.pt", "optimizer.pt"):
        a = torch.load(tmp_path / "straight" / final / name, weights_only=False)
        b = torch.load(tmp_path / "killed" / final / name, weights_only=False)
        flat_a, flat_b = _flatten(a), _flatten(b)
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), f"{name}: {key} differs"
    logs = [[json.loads(line) for line in (tmp_path / n / "log.jsonl").read_text().splitlines()]
            for n in ("straight", "killed")]
    assert [r["step"] for r in logs[1]] == list(range(1, STEPS + 1))  # truncated on resume
    keys = ("step", "loss", "lr", "grad_norm", "epoch")
    assert [[r[k] for k in keys] for r in logs[1]] == [[r[k] for k in keys] for r in logs[0]]


def _flatten(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_flatten(v, f"{prefix}{i}."))
    elif isinstance(tree, torch.Tensor):
        out[prefix] = tree
    else:
        out[prefix] = torch.tensor(float(tree)) if isinstance(tree, (int, float)) else \
            torch.tensor(hash(str(tree)))
    return out
