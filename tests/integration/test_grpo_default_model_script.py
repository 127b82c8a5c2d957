"""scripts/grpo_default_model.py end to end, scaled down: a tiny default model (the demo's build
on tiny lalm-synth), two closed-answer tasks, 2 GRPO steps; the held-out items, the table, the
chart and a rerun that reuses every finished part."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lalm.data.manifest import Example, ExampleTask, read_manifest
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
            "--tasks", ",".join(TASKS), "--train-tasks", ",".join(TASKS), "--train-items", "4",
            "--test-items", "2", "--valid-items", "1",
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
    paired = rows["pooled"]["paired"]  # the sign test counts the items that changed
    correct = [grpo_default_model.item_correct(out / f"eval-test-{w}") for w in ("before", "after")]
    assert paired["gained"] == sum(a and not b for b, a in zip(*(c.values() for c in correct)))
    assert paired["lost"] == sum(b and not a for b, a in zip(*(c.values() for c in correct)))
    assert f"{paired['gained']} answers turned right" in table
    valid = json.loads((out / "grpo.json").read_text())["valid_rows"]
    assert valid["pooled"]["items"] == 2  # one valid item per task, scored before and after


def test_the_probe_samples_the_valid_items_and_stops(run: tuple[Path, Path],
                                                      tmp_path: Path) -> None:
    model, _ = run
    args = _args(model, tmp_path) + ["--probe", "3"]
    assert grpo_default_model.main(args) == 0
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert set(probe) == set(TASKS)
    for row in probe.values():
        assert row["items"] == 1 and 0 <= row["sampled"] <= row["pass"] <= 1
        assert row["pass"] in (0.0, 1.0) and row["greedy"] in (0.0, 1.0)
    assert not (tmp_path / "run").exists() and not (tmp_path / "synth" / "test.jsonl").exists()


def test_the_sign_test_is_the_exact_binomial_tail() -> None:
    before = {f"i{k}": k < 2 for k in range(10)}  # right: i0, i1
    after = {f"i{k}": k >= 1 for k in range(10)}  # i0 turned wrong, i2..i9 turned right
    paired = grpo_default_model.sign_test(before, after)
    assert (paired["gained"], paired["lost"]) == (8, 1)
    assert paired["p"] == pytest.approx(2 * (1 + 9) / 2 ** 9)  # P(X <= 1), X ~ Bin(9, 1/2)
    assert grpo_default_model.sign_test(before, before) == {"gained": 0, "lost": 0, "p": 1.0}
    with pytest.raises(ValueError, match="different items"):
        grpo_default_model.sign_test(before, {"other": True})


def test_a_rerun_reuses_every_finished_part(run: tuple[Path, Path]) -> None:
    model, out = run
    marks = [out / f"eval-{split}-{when}" / "summary.json" for split in ("valid", "test")
             for when in ("before", "after")] + [out / "run" / "grpo_run.json"]
    before = [p.stat().st_mtime_ns for p in marks]
    table = (out / "grpo.md").read_text()
    assert grpo_default_model.main(_args(model, out)) == 0
    assert [p.stat().st_mtime_ns for p in marks] == before
    assert (out / "grpo.md").read_text() == table


def test_the_held_out_form_keeps_single_choice_training_items_of_choice_tasks() -> None:
    def item(name: str, k: int, choices: tuple[str, ...], split: str = "train") -> Example:
        return Example(f"{name}-{split}-{k}", (), ExampleTask(name, choices=choices), "a",
                       answer="a", split=split)

    train = [item("sound_event", 0, ()), item("sound_event", 1, ("a", "b")),
             item("mixed_qa", 0, ()), item("tempo", 0, ())]
    valid = [item("sound_event", 0, ("a", "b"), "valid"), item("mixed_qa", 0, (), "valid")]
    kept = grpo_default_model.in_held_out_form(train, valid)
    # sound_event: its open question goes; mixed_qa is open in valid too; tempo has no valid
    assert [e.id for e in kept] == ["sound_event-train-1", "mixed_qa-train-0", "tempo-train-0"]


def test_train_items_0_trains_on_the_models_own_items_in_the_held_out_form(
        run: tuple[Path, Path], tmp_path: Path) -> None:
    model, out = run
    data = model.with_name(model.name + ".work") / "lalm-synth"
    args = _args(model, tmp_path) + ["--train-items", "0", "--valid-only"]
    assert grpo_default_model.main(args) == 0
    own = {e.id: e for e in read_manifest(data / "train.jsonl") if e.task.name in TASKS}
    made = read_manifest(tmp_path / "train.jsonl")
    assert made and {e.id for e in made} <= set(own)
    assert all(e.task.choices for e in made)  # both tasks are single choice in valid
    assert {e.id for e in made} == {k for k, e in own.items() if e.task.choices}
    # the items of `run` (--train-items 4) were made here, the first ones being the model's own
    assert {e.id for e in read_manifest(out / "synth-train" / "train.jsonl")} == {
        f"{t}-train-{k:05d}" for t in TASKS for k in range(4)}
