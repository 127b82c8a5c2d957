"""The Qwen-Audio paper's tag ablation, small: does multitask training with hierarchical tags
beat multitask training with plain prompts, and single-task training, on the same budget?

    python scripts/ablation.py --out runs/ablation --size medium --steps 2400 --seeds 0,1

Every arm is lalm's default model (`lalm.demo`: the real Whisper tiny.en encoder, frozen, and
a fresh 4 x 192 Qwen2 decoder, Qwen2-Audio layout, the BPE tokenizer, whose specials include
Qwen-Audio's tags) trained by the default recipe (the ``default_model`` stage config) from the
same initial weights, with the same optimizer, batch budget and number of steps; only the data
differs:

* ``plain``: the lalm-synth train split as the recipe renders it: one chat turn holding the clips
  and the item's natural-language instruction ("What is the pitch of this note?");
* ``tags``: the same items, the same chat turn, but the instruction replaced by the item's
  Qwen-Audio hierarchical-tag prompt (`lalm.synth.render.v1_task_spec`, e.g.
  ``<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>``; question tasks
  keep their question between ``<|question|>`` and ``<|answer|>``). Chat items are the same in
  both arms;
* ``single-<task>``: one model per task in ``--single-tasks``, trained on that task's items only
  (tag prompts; the same number of steps, hence more passes over fewer items and 1 / (the task's
  share of the mix) times the updates a multitask arm spends on the task);
* ``share-<task>``: the same, for the task's share of the steps only (its share of the
  multitask training items): the updates a multitask arm spends on it.

Single-task arms run on the first seed only.

Each model is scored on the test split rendered as it was trained (`lalm.eval.synth_bench`,
official mode; chart score 0-100, higher is better). Arms run ``--jobs`` at a time, one torch
thread each; a finished arm (its ``eval/summary.json``) is not run again, an unfinished one
starts over. The table goes to ``<out>/ablation.md`` and the scores to ``<out>/ablation.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from lalm.data.manifest import (
    AudioRef,
    Example,
    ExampleTurn,
    read_manifest,
    write_manifest,
)
from lalm.demo import DefaultModelSpec, Prepared, prepare, recipe_config
from lalm.eval.report import write_strict_json
from lalm.files import atomic_write
from lalm.data.render import v1_task_spec
from lalm.training.distributed import torch_threads

SPLITS = ("train", "valid", "test")


def absolute(example: Example, root: Path) -> Example:
    """The example with absolute audio paths (the arms' manifests live elsewhere)."""
    audios = tuple(AudioRef(str((root / a.path).resolve()), a.offset, a.duration)
                   for a in example.audios)
    return dataclasses.replace(example, audios=audios)


def tagged(example: Example) -> Example:
    """The example as a one-turn chat whose text is its v1 tag prompt (chat and text-only items,
    which have none, are returned as they are)."""
    spec = v1_task_spec(example)
    if spec is None:
        return example
    turns = (ExampleTurn("user", spec.render(), tuple(range(len(example.audios)))),
             ExampleTurn("assistant", example.target))
    return dataclasses.replace(example, messages=turns)


def write_arm(folder: Path, splits: dict[str, list[Example]]) -> Path:
    """Write an arm's manifests (``<split>.jsonl``) into `folder`; returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        write_manifest(folder / f"{split}.jsonl", examples)
    return folder


def arm_manifests(data: Path, out: Path, single_tasks: list[str],
                  steps: int) -> dict[str, tuple[Path, int]]:
    """Every arm's manifest folder under `out` (written from the lalm-synth folder `data`) and
    its number of steps: `steps`, or for ``share-<task>`` the task's share of them (its share of
    the multitask arms' training items)."""
    items = {s: [absolute(e, data) for e in read_manifest(data / f"{s}.jsonl")] for s in SPLITS}
    tags = {s: [tagged(e) for e in es] for s, es in items.items()}
    arms = {"plain": (write_arm(out / "plain", items), steps),
            "tags": (write_arm(out / "tags", tags), steps)}
    for task in single_tasks:
        only = {s: [e for e in es if e.task.name == task] for s, es in tags.items()}
        if not only["train"] or not only["test"]:
            raise SystemExit(f"lalm-synth in {data} has no train/test items of task {task!r}")
        folder = write_arm(out / f"single-{task}", only)
        arms[f"single-{task}"] = (folder, steps)
        arms[f"share-{task}"] = (folder, max(1, round(steps * len(only["train"])
                                                      / len(items["train"]))))
    return arms


def run_arm(spec: DefaultModelSpec, prepared: Prepared, manifests: Path,
            run_dir: Path) -> dict[str, Any]:
    """Train one arm by the recipe on `manifests` and evaluate it on their test split; returns
    the per-task scores (`lalm.eval.synth_bench`)."""
    from lalm.eval.evaluate import evaluate
    from lalm.eval.synth_bench import SYNTH_TASK
    from lalm.generation import Pipeline
    from lalm.training import train

    summary_path = run_dir / "eval" / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text(encoding="utf-8"))["scores"]["tasks"]
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted arm starts over
    with torch_threads(spec.threads):
        t = time.perf_counter()
        result = train(recipe_config(spec, prepared, run_dir / "train", manifests))
        train_s = time.perf_counter() - t
        pipe = Pipeline.from_pretrained(result.export_dir)
        evaluate(pipe, SYNTH_TASK, manifests / "test.jsonl", run_dir / "eval", progress=False,
                 batch_size=spec.eval_batch_size, model=run_dir.name,
                 max_new_tokens=spec.max_new_tokens)
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["training"] = {"steps": result.step, "train_s": train_s,
                           "last_loss": result.losses[-1], "validation": result.validation}
    write_strict_json(summary_path, summary)
    return summary["scores"]["tasks"]


def _cell(values: list[float]) -> str:
    """Mean, and the range over seeds when there are several."""
    if not values:
        return ""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({min(values):.1f}-{max(values):.1f})"


def table(scores: dict[str, dict[int, dict[str, Any]]]) -> str:
    """The Markdown table: per task, each arm's chart score (mean over seeds, with the range);
    ``tags - plain`` per seed pair; means over all tasks and over the single-task ones."""
    tasks = list(next(iter(scores["tags"].values())))
    singles = [a for a in scores if a.startswith("single-")]
    seeds = sorted(scores["tags"])

    def values(arm: str, task: str) -> list[float]:
        return [scores[arm][s][task]["score"] for s in seeds
                if s in scores[arm] and task in scores[arm][s]]

    def diff(task: str) -> list[float]:
        return [t - p for t, p in zip(values("tags", task), values("plain", task))]

    header = ("| task | metric | tags | plain | tags - plain | single-task, all steps "
              "| single-task, its share |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|"]
    for task in tasks:
        single = values(f"single-{task}", task) if f"single-{task}" in scores else []
        share = values(f"share-{task}", task) if f"share-{task}" in scores else []
        lines.append(f"| {task} | {scores['tags'][seeds[0]][task]['metric']} | "
                     f"{_cell(values('tags', task))} | {_cell(values('plain', task))} | "
                     f"{_cell(diff(task))} | {_cell(single)} | {_cell(share)} |")

    def mean_over(arm: str, names: list[str]) -> list[float]:
        return [statistics.fmean(scores[arm][s][t]["score"] for t in names)
                for s in seeds if s in scores[arm]]

    mean_tags, mean_plain = mean_over("tags", tasks), mean_over("plain", tasks)
    lines.append(f"| **mean, {len(tasks)} tasks** | | {_cell(mean_tags)} | {_cell(mean_plain)} "
                 f"| {_cell([t - p for t, p in zip(mean_tags, mean_plain)])} | | |")
    if singles:
        names = [a.removeprefix("single-") for a in singles]

        def own_task(prefix: str) -> list[float]:
            return [statistics.fmean(scores[prefix + t][s][t]["score"] for t in names)
                    for s in seeds if all(s in scores.get(prefix + t, {}) for t in names)]

        lines.append(f"| **mean, {', '.join(names)}** | | "
                     f"{_cell(mean_over('tags', names))} | {_cell(mean_over('plain', names))} "
                     f"| | {_cell(own_task('single-'))} | {_cell(own_task('share-'))} |")
    wins = sum(statistics.fmean(diff(t)) > 0 for t in tasks)
    ties = sum(statistics.fmean(diff(t)) == 0 for t in tasks)
    lines.append("")
    lines.append(f"tags ahead of plain on {wins} of {len(tasks)} tasks, level on {ties} "
                 f"(mean over seeds {', '.join(map(str, seeds))}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="output folder")
    p.add_argument("--size", default="medium", help="lalm-synth size (lalm.synth.SIZES)")
    p.add_argument("--steps", type=int, default=2400, help="optimizer steps per arm")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (initial weights and "
                                                "data order; the data stay the same)")
    p.add_argument("--single-tasks", default="asr,sound_event,music_pitch",
                   help="comma-separated tasks that also get a single-task model (first seed "
                        "only: each costs as much as a multitask arm)")
    p.add_argument("--jobs", type=int, default=2, help="arms trained at once (1 thread each)")
    args = p.parse_args(argv)

    single_tasks = [t for t in args.single_tasks.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",")]
    scores: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in seeds:
        spec = DefaultModelSpec(synth_size=args.size, init_seed=seed,
                                overrides=(f"run.seed={seed}", "run.progress=false"))
        prepared = prepare(spec, args.out, log=lambda m: print(m, file=sys.stderr, flush=True))
        arms = arm_manifests(prepared.data, args.out / "arms",
                             single_tasks if seed == seeds[0] else [], args.steps)
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {name: pool.submit(run_arm, dataclasses.replace(spec, overrides=(
                           *spec.overrides, f"run.max_steps={steps}")), prepared, folder,
                           args.out / f"seed-{seed}" / name)
                       for name, (folder, steps) in arms.items()}
            for name, future in futures.items():
                scores.setdefault(name, {})[seed] = future.result()
                print(f"seed {seed}: {name} done", file=sys.stderr, flush=True)

    text = table(scores)
    atomic_write(args.out / "ablation.md", text.encode("utf-8"))
    write_strict_json(args.out / "ablation.json",
                      {"args": {k: str(v) for k, v in vars(args).items()}, "scores": scores})
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
