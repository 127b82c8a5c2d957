"""Kill a real `lalm train` process with SIGKILL mid-run, resume it, and get bit-identical
weights (and optimizer state) to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lalm.testing.training import tiny_stage, write_tone_dataset
from lalm.tokenizer import load_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
STEPS = 6


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


def test_sigkill_then_resume_is_bit_identical(tmp_path, qwen2_tokenizer_dir):
    manifest = write_tone_dataset(tmp_path / "data", 5)
    straight = _config(tmp_path, "straight", manifest, qwen2_tokenizer_dir)
    killed = _config(tmp_path, "killed", manifest, qwen2_tokenizer_dir)

    proc = _train(killed)
    marker = tmp_path / "killed" / "checkpoints" / "step-00000002"
    deadline = time.monotonic() + 240
    while not marker.exists():  # kill between the step-2 and step-4 checkpoints
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
    logs = [(tmp_path / n / "log.jsonl").read_text().splitlines()[-1] for n in
            ("straight", "killed")]
    assert logs[0].split('"lr"')[0] == logs[1].split('"lr"')[0]  # same final step and loss


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
