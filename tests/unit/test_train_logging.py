"""What a run reports (`lalm.training.runlog`): the trainable-parameter line, tokens/s,
samples/s and ETA per log line, an experiment tracker when asked, and ``run.epochs`` schedules
(their length derived from the data, resumed exactly)."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch

from lalm.errors import ConfigError
from lalm.testing.training import tiny_config, write_tiny_tokenizer, write_tone_dataset
from lalm.training import train

ITEMS = 5


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tone_dataset(tmp_path_factory.mktemp("tones"), ITEMS)


@pytest.fixture(scope="module")
def tokenizer_dir(tones, tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), tones)



def _log(folder):
    return [json.loads(x) for x in (folder / "log.jsonl").read_text().splitlines()]


def test_log_lines_carry_throughput_and_eta_and_the_start_line_the_parameters(
        tones, tokenizer_dir, tmp_path, capsys):
    config = tiny_config(tmp_path / "run", tones, tokenizer_dir,
                     parts={"encoder": "frozen", "projector": "full", "decoder": "lora"},
                     run={"max_steps": 3, "save_every": 0})
    result = train(config)
    err = capsys.readouterr().err
    assert f"{result.trainable_params:,} of " in err and "3 steps" in err
    lines = _log(tmp_path / "run")
    assert [r["step"] for r in lines] == [1, 2, 3]
    for r in lines:
        assert r["tokens_per_s"] > 0 and r["samples_per_s"] > 0 and r["eta_s"] >= 0
        assert r["samples"] == r["step"]  # data.max_items 1: one item a step
    assert lines[-1]["eta_s"] == 0
    assert isinstance(lines[-1]["tokens"], int) and lines[-1]["tokens"] > 0
    assert result.examples_per_s > 0 and result.tokens_per_s > 0


class FakeTracker(types.ModuleType):
    """Stands in for the wandb / swanlab package (a mock: neither is installed here and their
    services cannot be reached); records the calls lalm makes."""

    def __init__(self, name):
        super().__init__(name)
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))

    def log(self, values, step):
        self.calls.append(("log", step, dict(values)))

    def finish(self):
        self.calls.append(("finish",))


@pytest.mark.parametrize("tracker,name_key,dir_key", [("wandb", "name", "dir"),
                                                      ("swanlab", "experiment_name", "logdir")])
def test_a_tracker_gets_the_config_and_every_log_line(tracker, name_key, dir_key, tones,
                                                      tokenizer_dir, tmp_path, monkeypatch):
    fake = FakeTracker(tracker)
    monkeypatch.setitem(sys.modules, tracker, fake)
    config = tiny_config(tmp_path / "run", tones, tokenizer_dir,
                     run={"max_steps": 2, "save_every": 0, "tracker": tracker,
                          "tracker_project": "proj"})
    result = train(config)
    (kind, kwargs), *rest = fake.calls
    assert kind == "init" and kwargs["project"] == "proj" and kwargs[name_key] == "tiny"
    assert kwargs[dir_key] == str(tmp_path / "run" / tracker)
    assert kwargs["config"]["run"]["tracker"] == tracker
    assert rest[0] == ("log", 0, {"trainable_params": result.trainable_params,
                                  "total_params": rest[0][2]["total_params"]})
    steps = [c for c in rest[1:] if c[0] == "log"]
    assert [c[1] for c in steps] == [1, 2]
    assert steps[-1][2]["loss"] == pytest.approx(result.losses[-1])
    assert {"lr", "tokens_per_s", "samples_per_s", "eta_s"} <= steps[-1][2].keys()
    assert rest[-1] == ("finish",)


def test_a_tracker_without_its_package_is_refused_by_name(tones, tokenizer_dir, tmp_path,
                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "swanlab", None)  # importing it raises ImportError
    config = tiny_config(tmp_path / "run", tones, tokenizer_dir, run={"tracker": "swanlab"})
    with pytest.raises(ConfigError, match="run.tracker=swanlab needs the swanlab package"):
        train(config)
    with pytest.raises(ConfigError, match="run.tracker must be one of"):
        tiny_config(tmp_path / "run", tones, tokenizer_dir, run={"tracker": "mlflow"})


def test_epochs_set_the_steps_and_resume_exactly(tones, tokenizer_dir, tmp_path):
    # data.max_items 1: ITEMS micro-batches an epoch; grad_accum 2: ceil(2 x 5 / 2) = 5 steps
    sections = dict(optim={"lr": 3e-3, "warmup_steps": 1, "grad_accum": 2},
                    run={"epochs": 2, "save_every": 2, "keep_last": 10})
    straight = train(tiny_config(tmp_path / "straight", tones, tokenizer_dir, **sections))
    assert straight.step == 5
    lines = _log(tmp_path / "straight")
    assert lines[-1]["samples"] == 2 * ITEMS and lines[-1]["epoch"] == 1  # 0-based
    saved = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert saved["run"]["max_steps"] == 5 and saved["run"]["epochs"] == 2

    # a run stopped after its step-2 checkpoint: the same folder without the later ones
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    for later in ("step-00000004", "step-00000005"):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / later)
    resumed = train(tiny_config(tmp_path / "resumed", tones, tokenizer_dir, **sections),
                    resume=True)
    assert resumed.step == 5 and resumed.losses == straight.losses[2:]
    final = "checkpoints/step-00000005/model.pt"
    a = torch.load(tmp_path / "straight" / final, weights_only=True)
    b = torch.load(tmp_path / "resumed" / final, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    keys = ("step", "loss", "lr", "epoch", "tokens", "samples")
    assert [[r[k] for k in keys] for r in _log(tmp_path / "resumed")] == \
        [[r[k] for k in keys] for r in lines]
    with pytest.raises(ConfigError, match="run.epochs must be > 0"):
        tiny_config(tmp_path / "x", tones, tokenizer_dir, run={"epochs": 0})


def test_with_steps_derives_the_schedule_length(tones, tokenizer_dir, tmp_path):
    fixed = tiny_config(tmp_path, tones, tokenizer_dir, run={"max_steps": 7})
    assert fixed.with_steps(5) is fixed  # no run.epochs: run.max_steps stands
    by_epochs = tiny_config(tmp_path, tones, tokenizer_dir, optim={"grad_accum": 2},
                        run={"epochs": 3})
    assert by_epochs.with_steps(5).run.max_steps == 8  # ceil(3 x 5 / 2)
    with pytest.warns(UserWarning, match="warmup_steps=100 in a run of run.max_steps=3"):
        tiny_config(tmp_path, tones, tokenizer_dir, optim={"warmup_steps": 100},
                run={"epochs": 1}).with_steps(3)
