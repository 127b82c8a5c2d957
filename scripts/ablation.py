"""The Qwen-Audio paper's tag ablation, small: does multitask training with hierarchical tags
beat multitask training with plain prompts, and single-task training, on the same budget?

    python scripts/ablation.py --synth data/lalm-synth --out runs/ablation \
        --preset tiny-random-v1 --tokenizer QWEN_TIKTOKEN --steps 1500

Arms (every arm: the same preset, initial seed, optimizer, batch budget and number of steps):

* ``tags``: the lalm-synth train split, each item as its Qwen-Audio hierarchical-tag task prompt
  (`lalm.synth.render.v1_task_spec`: ``<|startoftranscript|><|en|><|transcribe|>...``);
* ``plain``: the same items with no tags: each becomes a one-turn chat (the item's natural-language
  instruction in the Qwen-Audio-Chat ChatML format), so the model must tell the task from words;
* ``single-<task>``: one model per task in ``--single-tasks``, trained on that task's items only
  (same number of steps, hence more passes over its data).

Each model is evaluated with `lalm.eval.evaluate` on the test split rendered as it was trained
(lalm-synth procedure, official mode); the table goes to ``<out>/ablation.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from lalm.data.manifest import (
    AudioRef,
    Example,
    Message,
    atomic_write,
    read_manifest,
    write_manifest,
)
from lalm.eval.evaluate import evaluate
from lalm.generation import Pipeline
from lalm.tokenizer import load_tokenizer
from lalm.training import TrainConfig, train


def absolute(example: Example, root: Path) -> Example:
    """The example with absolute audio paths (the arms' manifests live elsewhere)."""
    audios = tuple(AudioRef(str((root / a.path).resolve()), a.offset, a.duration)
                   for a in example.audios)
    return dataclasses.replace(example, audios=audios)


def plain(example: Example) -> Example:
    """The example as a one-turn chat: its instruction with its audio, then the target (items
    that already are chats keep their turns). No task tag is rendered for a chat."""
    if example.messages:
        return example
    turns = (Message("user", example.task.instruction, tuple(range(len(example.audios)))),
             Message("assistant", example.target))
    return dataclasses.replace(example, messages=turns)


def write_arm(folder: Path, train: list[Example], test: list[Example]) -> tuple[Path, Path]:
    """Write an arm's train/test manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder / "train.jsonl", train)
    write_manifest(folder / "test.jsonl", test)
    return folder / "train.jsonl", folder / "test.jsonl"


def stage(name: str, manifest: Path, args: argparse.Namespace) -> TrainConfig:
    """The arm's training stage: all parts train from the preset's random initialisation."""
    return TrainConfig.from_dict({
        "stage": f"ablation-{name}",
        "model": {"preset": args.preset, "init_seed": args.seed,
                  "overrides": {"decoder": {"vocab_size": len(load_tokenizer(args.tokenizer))}}},
        "data": {"tokenizer": args.tokenizer, "train": [{"manifest": str(manifest)}],
                 "max_tokens": args.max_tokens, "max_frames": args.max_frames},
        "parts": {"encoder": "full", "projector": "full", "decoder": "full"},
        "optim": {"lr": args.lr, "warmup_steps": min(100, args.steps // 10)},
        "run": {"out_dir": str(args.out / name / "train"), "max_steps": args.steps,
                "seed": args.seed, "save_every": 0, "metric_items": 0, "export": True},
    }, source=f"ablation arm {name}")


def run_arm(name: str, train_manifest: Path, test_manifest: Path,
            args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm (resuming) and evaluate it; returns its per-task scores."""
    result = train(stage(name, train_manifest, args), resume=True)
    pipe = Pipeline.from_pretrained(result.export_dir)
    summary = evaluate(pipe, "lalm-synth", test_manifest, args.out / name / "eval",
                       batch_size=args.batch_size, model=name)
    return summary["scores"]["tasks"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synth", type=Path, required=True, help="lalm-synth folder")
    p.add_argument("--out", type=Path, default=Path("runs/ablation"), help="output folder")
    p.add_argument("--preset", default="tiny-random-v1", help="model preset (a Qwen-Audio v1 one)")
    p.add_argument("--tokenizer", required=True, help="Qwen-Audio tokenizer (qwen.tiktoken)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per arm")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--max-tokens", type=int, default=4096, help="batch budget in tokens")
    p.add_argument("--max-frames", type=int, default=12000, help="batch budget in mel frames")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    p.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    p.add_argument("--single-tasks", default="asr,sound_event,music_pitch",
                   help="comma-separated tasks that also get a single-task model")
    args = p.parse_args(argv)

    train_items = [absolute(e, args.synth) for e in read_manifest(args.synth / "train.jsonl")]
    test_items = [absolute(e, args.synth) for e in read_manifest(args.synth / "test.jsonl")]
    arms = {"tags": write_arm(args.out / "tags", train_items, test_items),
            "plain": write_arm(args.out / "plain", [plain(e) for e in train_items],
                               [plain(e) for e in test_items])}
    for task in args.single_tasks.split(","):
        arms[f"single-{task}"] = write_arm(
            args.out / f"single-{task}", [e for e in train_items if e.task.name == task],
            [e for e in test_items if e.task.name == task])
    scores = {name: run_arm(name, *paths, args) for name, paths in arms.items()}

    tasks = list(scores["tags"])
    header = "| task | metric | " + " | ".join(scores) + " |"
    lines = [header, "|---|---|" + "---:|" * len(scores)]
    for task in tasks:
        cells = [f"{s[task]['score']:.1f}" if task in s else "" for s in scores.values()]
        lines.append(f"| {task} | {scores['tags'][task]['metric']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write(args.out / "ablation.md", table.encode("utf-8"))
    atomic_write(args.out / "ablation.json",
                 (json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                              "scores": scores}, indent=1) + "\n").encode("utf-8"))
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
