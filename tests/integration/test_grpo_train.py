"""GRPO end to end on a tiny random model: `lalm train grpo` as a
user runs it (only paths and sizes overridden), a run killed with SIGKILL and resumed being
bit-identical to an uninterrupted one, and a reward signal moving the weights in process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lalm.checkpoint import load_model, save_model
from lalm.config import ModelConfig
from lalm.model import AudioLanguageModel
from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer
from lalm.training import TrainConfig, train
from lalm.training.build import init_weights
from lalm.checkpoint.peft import load_peft_adapter
from lalm.training.rewards import REWARDS, register_reward

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train manifest, valid manifest, tokenizer folder, vocabulary size)."""
    root = tmp_path_factory.mktemp("grpo")
    train_set = write_tone_dataset(root / "tones", 4)
    valid_set = write_tone_dataset(root / "tones", 2, split="valid")
    tokenizer = write_tiny_tokenizer(root / "tokenizer", train_set, valid_set)
    return train_set, valid_set, tokenizer, len(load_tokenizer(tokenizer))


def _tiny(data, seed: int) -> AudioLanguageModel:
    stage = tiny_stage("unused", data[0], data[2], data[3])
    model = AudioLanguageModel(ModelConfig.from_name("tiny-random",
                                                     **stage["model"]["overrides"]))
    init_weights(model, seed)
    return model


def _lalm(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "lalm", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_lalm_train_runs_the_shipped_grpo_yaml(data, tmp_path):
    train_set, valid_set, tokenizer, _ = data
    checkpoint = tmp_path / "start"
    save_model(_tiny(data, 0), checkpoint)
    shutil.copy(tokenizer / "tokenizer.json", checkpoint)
    proc = _lalm("train", "grpo",
                 *[f"--set={s}" for s in (
                     f"model.checkpoint={checkpoint}", f"data.train.0.manifest={train_set}",
                     f"data.valid.manifest={valid_set}", f"run.out_dir={tmp_path / 'run'}",
                     "run.max_steps=2", "run.save_every=0", "run.progress=false", "run.log_every=1",
                     "run.precision=fp32", "run.metric_items=2", "run.max_new_tokens=3",
                     "optim.grad_accum=1", "optim.warmup_steps=1", "grpo.group_size=2",
                     "grpo.prompts=2", "grpo.max_new_tokens=4")])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert {"reward", "reward_exact_match", "kl", "clipped"} <= set(steps[0])
    assert "accuracy" in records[-1]  # the held-out task metrics at the end
    base = load_model(checkpoint)
    load_peft_adapter(base, tmp_path / "run" / "adapter")  # LoRA only: the PEFT adapter
    ids = torch.arange(3, 20)[None]
    with torch.no_grad():
        torch.testing.assert_close(base.eval()(ids).logits,
                                   load_model(tmp_path / "run" / "export")(ids).logits,
                                   rtol=1e-5, atol=1e-5)


def _kl_stage(data, out: Path, reference: Path) -> Path:
    # rewards are all 0 for a random model; the KL to a *different* reference still moves the
    # weights from step 1, on the sampled tokens, so the resumed run must sample the same ones
    stage = tiny_stage(out, data[0], data[2], data[3], objective="grpo",
                       grpo={"group_size": 3, "prompts": 1, "max_new_tokens": 5,
                             "kl_coef": 1.0, "reference": str(reference)},
                       optim={"lr": 1e-2, "warmup_steps": 1, "grad_accum": 2},
                       run={"max_steps": STEPS, "save_every": 2, "keep_last": 10,
                            "log_every": 1, "progress": False, "export": False,
                            "metric_items": 0})
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(stage))
    return path


def test_sigkill_then_resume_is_bit_identical(data, tmp_path):
    reference = tmp_path / "reference"
    save_model(_tiny(data, 1), reference)
    straight = _kl_stage(data, tmp_path / "straight", reference)
    killed = _kl_stage(data, tmp_path / "killed", reference)
    proc = _lalm("train", str(killed))
    marker = tmp_path / "killed" / "checkpoints" / "step-00000002"
    deadline = time.monotonic() + 240
    while not marker.exists():  # kill after the step-2 checkpoint, before the end
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "checkpoints" / f"step-{STEPS:08d}").exists()
    for p in (_lalm("train", str(killed), "--resume"), _lalm("train", str(straight))):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()

    final = f"checkpoints/step-{STEPS:08d}"
    a, b = (torch.load(tmp_path / n / final / "model.pt", weights_only=True)
            for n in ("straight", "killed"))
    start = _tiny(data, 0).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the run did move the weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = (torch.load(tmp_path / n / final / "optimizer.pt", weights_only=False)["state"]
              for n in ("straight", "killed"))
    assert all(torch.equal(oa[p][k], ob[p][k]) for p in oa for k in oa[p])
    logs = [[json.loads(x) for x in (tmp_path / n / "log.jsonl").read_text().splitlines()]
            for n in ("straight", "killed")]
    timing = ("elapsed_s", "eta_s", "tokens_per_s", "samples_per_s")  # the clock's, not the run's
    assert [{k: v for k, v in r.items() if k not in timing} for r in logs[1]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in logs[0]]
    assert logs[0][-1]["samples"] == STEPS * 2 * 3  # answer rows: 2 micro-batches x 1 x 3


def test_a_reward_signal_moves_the_policy(data, tmp_path):
    """A registered reward (longer answers score higher) gives non-zero advantages: the loss
    and gradient are non-zero and the LoRA weights change."""
    if "test_length" not in REWARDS:
        register_reward("test_length", lambda text, example: min(len(text), 20) / 20)
    stage = tiny_stage(tmp_path / "run", data[0], data[2], data[3], objective="grpo",
                       parts={"encoder": "frozen", "projector": "frozen", "decoder": "lora"},
                       grpo={"group_size": 4, "prompts": 2, "max_new_tokens": 6,
                             "rewards": {"test_length": 1.0}, "loss_agg": "token",
                             "clip_high": 0.28, "kl_coef": 0.1},
                       run={"max_steps": 2, "save_every": 0, "log_every": 1,
                            "progress": False})
    result = train(TrainConfig.from_dict(stage))
    records = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 for r in records)
    assert 0 < records[0]["reward_test_length"] < 1
    state = torch.load(result.checkpoint / "model.pt", weights_only=True)
    assert any(state[k].abs().sum() > 0 for k in state if k.endswith("lora_b"))


def test_two_ddp_ranks_train_and_refuse_fsdp(data, tmp_path):
    """Under torchrun each rank decodes its own prompts (answers of different lengths) and DDP
    still meets in every backward; FSDP, which would need every rank in each decode step, is
    refused by name."""
    reference = tmp_path / "reference"
    save_model(_tiny(data, 1), reference)
    config = _kl_stage(data, tmp_path / "ddp", reference)
    stage = yaml.safe_load(config.read_text())
    stage["run"].update(max_steps=2, save_every=0)
    config.write_text(yaml.safe_dump(stage))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--standalone", "-m", "lalm", "train"]
    done = subprocess.run([*launcher, str(config)], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    records = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[-1]["grad_norm"] > 0
    done = subprocess.run([*launcher, str(config), "--set", "run.strategy=fsdp"], env=env,
                          capture_output=True, timeout=300)
    assert done.returncode != 0 and b"grpo runs under ddp only" in done.stderr
