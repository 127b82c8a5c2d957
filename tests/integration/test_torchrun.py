"""torchrun with 2 gloo ranks (DDP and FSDP2) matches one process with the same global batch:
same per-step loss, same final weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lalm.testing.training import tiny_stage, write_tone_dataset
from lalm.tokenizer import load_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
STEPS = 2


def _run(tmp_path: Path, name: str, ranks: int, grad_accum: int, strategy: str,
         manifest: Path, tokenizer: Path) -> Path:
    stage = tiny_stage(tmp_path / name, manifest, tokenizer, len(load_tokenizer(tokenizer)),
                       optim={"grad_accum": grad_accum, "lr": 3e-3, "warmup_steps": 1},
                       run={"max_steps": STEPS, "save_every": 0, "strategy": strategy})
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(stage))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                 "--standalone", "-m", "lalm"] if ranks > 1 else
                [sys.executable, "-m", "lalm"])
    done = subprocess.run([*launcher, "train", str(config)], env=env, capture_output=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return tmp_path / name


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process(tmp_path, qwen2_tokenizer_dir, strategy):
    manifest = write_tone_dataset(tmp_path / "data", 4)
    one = _run(tmp_path, "one", 1, 2, strategy, manifest, qwen2_tokenizer_dir)
    two = _run(tmp_path, "two", 2, 1, strategy, manifest, qwen2_tokenizer_dir)

    def losses(run: Path) -> list[float]:
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in lines if "loss" in r]

    assert len(losses(one)) == STEPS
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    final = f"checkpoints/step-{STEPS:08d}/model.pt"
    a = torch.load(one / final, weights_only=True)
    b = torch.load(two / final, weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
