"""torchrun with 2 gloo ranks (DDP and FSDP2) matches one process with the same global batch:
same per-step loss, same final weights. DDP runs once on audio only (find_unused_parameters
off, as auto picks it) and once with a text-only item in the mix (auto turns it on: that batch
leaves the encoder and projector without gradients)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lalm.data.manifest import Example, ExampleTask, read_manifest, write_manifest
from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
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
    done = subprocess.run([*launcher, "train", str(config)], env=env, capture_output=True,
                          check=False, timeout=300)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    summaries = [line for line in done.stdout.decode().splitlines() if line.startswith("step=")]
    assert len(summaries) == 1, done.stdout.decode()  # rank 0 alone reports
    return tmp_path / name


@pytest.mark.parametrize(("strategy", "text_only"),
                         [("ddp", False), ("ddp", True), ("fsdp", False)])
def test_two_ranks_match_one_process(tmp_path, strategy, text_only):
    manifest = write_tone_dataset(tmp_path / "data", 3 if text_only else 4)
    if text_only:
        write_manifest(manifest, [*read_manifest(manifest), Example(
            "text-000", (), ExampleTask("text_chat", instruction="Name a note."), "A4")])
    tokenizer = write_tiny_tokenizer(tmp_path / "tokenizer", manifest)
    one = _run(tmp_path, "one", 1, 2, strategy, manifest, tokenizer)
    two = _run(tmp_path, "two", 2, 1, strategy, manifest, tokenizer)

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
