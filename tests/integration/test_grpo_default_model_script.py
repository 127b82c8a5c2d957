"""scripts/grpo_default_model.py end to end, scaled down: a tiny default model (the demo's build
on tiny lalm-synth), two closed-answer tasks, 2 GRPO steps; the held-out items, the table, the
chart and a rerun that reuses every finished part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lalm.data.manifest import read_manifest
from lalm.demo import DefaultModelSpec, build_default_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import grpo_default_model  # scripts/ is not a package

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ("sound_event", "speaker_gender")
TINY = DefaultModelSpec(
    synth_size="tiny", synth_tasks=TASKS, bpe_vocab=400,
    decoder={"dim": 64, "n_layer": 1, "n_head": 2, "n_kv_head": 1, "hidden_dim": 128,
             "max_seq_len": 512},
    overrides=("run.max_steps=2", "optim.warmup_steps=1", "run.progress=false"),
    eval_batch_size=4, max_new_tokens=4)


def _args(model: Path, out: Path) -> list[str]:
    return ["--out", str(out), "--model", str(model),
            "--data", str(model.with_name(model.name + ".work") / "lalm-synth"),
            "--tasks", ",".join(TASKS), "--test-items", "2", "--valid-items", "1",
            "--steps", "2", "--group-size", "2", "--prompts", "1", "--warmup", "1",
            "--max-new-tokens", "4", "--eval-max-new-tokens", "4", "--eval-batch-size", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model = build_default_model(TINY, tmp_path_factory.mktemp("cache") / "default-model",
                                log=lambda _: None)
    out = tmp_path_factory.mktemp("grpo")
    assert grpo_default_model.main(_args(model, out)) == 0
    return model, out


def test_held_out_items_extend_the_models_own_test_split(run: tuple[Path, Path]) -> None:
    model, out = run
    own = {e.id: e for e in read_manifest(model.with_name(model.name + ".work") / "lalm-synth"
                                          / "test.jsonl")}
    made = read_manifest(out / "synth" / "test.jsonl")
    assert [e.id for e in made] == [f"{t}-test-{k:05d}" for t in TASKS for k in range(2)]
    for example in made:  # item 0 of a task is the model's own test item, drawn again
        if example.id in own:
            assert example == own[example.id]
    assert {e.task.name for e in read_manifest(out / "train.jsonl")} == set(TASKS)


def test_two_grpo_steps_are_logged_and_both_models_scored(run: tuple[Path, Path]) -> None:
    _, out = run
    records = [json.loads(x) for x in (out / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward" in r] == [1, 2]
    rows = json.loads((out / "grpo.json").read_text())["rows"]
    assert set(rows) == {*TASKS, "pooled"}
    assert rows["pooled"]["items"] == 4 and 0 <= rows["pooled"]["after"] <= 1
    table = (out / "grpo.md").read_text()
    assert all(f"| {task} | 2 |" in table for task in TASKS) and "| **pooled** | 4 |" in table
    assert (out / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_reuses_every_finished_part(run: tuple[Path, Path]) -> None:
    model, out = run
    marks = [out / "eval-before" / "summary.json", out / "eval-after" / "summary.json",
             out / "run" / "grpo_run.json"]
    before = [p.stat().st_mtime_ns for p in marks]
    table = (out / "grpo.md").read_text()
    assert grpo_default_model.main(_args(model, out)) == 0
    assert [p.stat().st_mtime_ns for p in marks] == before
    assert (out / "grpo.md").read_text() == table
