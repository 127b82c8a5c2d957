"""scripts/ablation.py end to end, scaled down: tiny lalm-synth, the default model, 2 steps per
arm, one single-task task; the arms' data, step counts, resumption and the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lalm.data.manifest import read_manifest
from lalm.synth import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import ablation  # scripts/ is not a package; spawned workers import it by this name

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ablation")
    args = ["--out", str(out), "--size", "tiny", "--steps", "2", "--seeds", "0",
            "--single-tasks", "sound_event", "--jobs", "1"]
    assert ablation.main(args) == 0
    return out, (out / "ablation.md").read_text(encoding="utf-8")


def test_arms_differ_only_in_the_prompt(run: tuple[Path, str]) -> None:
    out, _ = run
    plain = {e.id: e for e in read_manifest(out / "arms" / "plain" / "train.jsonl")}
    tags = {e.id: e for e in read_manifest(out / "arms" / "tags" / "train.jsonl")}
    assert plain.keys() == tags.keys()
    asr = next(e for e in tags.values() if e.task.name == "asr")
    assert asr.messages[0].text.startswith("<|startoftranscript|>")
    assert asr.messages[1].text == asr.target == plain[asr.id].target
    chat = next(e for e in tags.values() if e.task.name == "text_chat")
    assert chat == plain[chat.id]  # no tag prompt: the same item
    single = read_manifest(out / "arms" / "single-sound_event" / "test.jsonl")
    assert {e.task.name for e in single} == {"sound_event"}


def test_every_arm_trained_its_steps_and_was_scored(run: tuple[Path, str]) -> None:
    out, table = run
    steps = {}
    for arm in ("plain", "tags", "single-sound_event", "share-sound_event"):
        summary = json.loads((out / "seed-0" / arm / "eval" / "summary.json").read_text())
        steps[arm] = summary["training"]["steps"]
    # tiny lalm-synth: one training item per task, so the task's share of 2 steps rounds to 1
    assert steps == {"plain": 2, "tags": 2, "single-sound_event": 2, "share-sound_event": 1}
    assert all(f"| {task} |" in table for task in TASKS)
    assert "| **mean, sound_event** |" in table


def test_a_rerun_reuses_finished_arms(run: tuple[Path, str]) -> None:
    out, table = run
    summary = out / "seed-0" / "tags" / "eval" / "summary.json"
    before = summary.stat().st_mtime_ns
    assert ablation.main(["--out", str(out), "--size", "tiny", "--steps", "2", "--seeds", "0",
                          "--single-tasks", "sound_event", "--jobs", "1"]) == 0
    assert summary.stat().st_mtime_ns == before
    assert (out / "ablation.md").read_text(encoding="utf-8") == table
