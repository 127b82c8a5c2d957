"""GRPO from lalm's default model on lalm-synth's closed-answer tasks: accuracy before and after
on held-out test items, and the reward curve.

    python scripts/grpo_default_model.py --out runs/grpo-default --steps 150

The starting point is lalm's default model (`lalm.demo.ensure_default_model`: Whisper tiny.en,
frozen, + a 4 x 192 Qwen2 decoder trained by SFT on lalm-synth small). The GRPO stage is the
shipped ``grpo`` config (``lalm/training/configs/stage4_grpo.yaml``) with the paths, sizes and
``--set`` overrides below; it trains on the default model's own training items of `TASKS`
(the single-choice and short-answer audio questions of lalm-synth), rewarded by
``normalized_match``, the same comparison as the lalm-synth accuracy (`lalm.eval.synth_bench`).

Held-out items: lalm-synth draws item k of a task and split from (seed, task, split, k) alone,
so ``--test-items`` test items per task (``--valid-items`` valid items) are made here in
``<out>/synth``; the first 10 test (5 valid) per task are the default model's own test (valid)
split, the rest are more of the same split. Both models are scored on the same test items by
`lalm.eval.synth_bench.SYNTH_TASK` (official mode); the valid items feed the stage's periodic
metrics (for choosing settings; the test split is never used for that).

Writes ``<out>/grpo.md`` (per-task table with standard errors), ``<out>/grpo.json`` and
``<out>/reward.png`` (reward per step, its moving mean, the valid accuracy). A finished part
(data, evaluation, training) is reused by a rerun.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ablation import absolute  # scripts/ablation.py, beside this script
from lalm.assets import default_model_dir
from lalm.data.manifest import Example, read_manifest, write_manifest
from lalm.eval.report import write_strict_json
from lalm.synth.generate import Job, make_item
from lalm.training.distributed import torch_threads

#: lalm-synth's tasks with one short exact answer (a class label, a count, a number or an event
#: order; in valid/test always as a single choice among up to 4 options), and its audio
#: question answering tasks (``mixed_qa``: open questions about a mixture).
TASKS = ("language_id", "speaker_gender", "speaking_rate", "sound_event", "acoustic_scene",
         "event_count", "event_order", "music_pitch", "music_instrument", "chord_quality",
         "tempo", "mixed_qa", "mixed_choice")
GRPO_CONFIG = Path(__file__).resolve().parents[1] / "lalm" / "training" / "configs" / \
    "stage4_grpo.yaml"


def held_out(folder: Path, seed: int, tasks: list[str], counts: dict[str, int]) -> Path:
    """lalm-synth items 0..n-1 of each task in each split of `counts` (made unless there),
    with ``<split>.jsonl`` manifests in `folder`; returns `folder`."""
    for split, n in counts.items():
        jobs = [Job(task, split, k) for task in tasks for k in range(n)]
        for job in jobs:
            make_item(folder, seed, job)
        write_manifest(folder / f"{split}.jsonl", [
            Example.from_dict(json.loads((folder / "items" / f"{job.id}.json").read_text(
                encoding="utf-8"))) for job in jobs])
    return folder


def evaluate_model(model: Path, test: Path, out: Path, batch_size: int,
                   max_new_tokens: int) -> dict[str, Any]:
    """The lalm-synth per-task scores of `model` on `test` (resumes in `out`)."""
    from lalm.eval.evaluate import evaluate
    from lalm.eval.synth_bench import SYNTH_TASK
    from lalm.generation import Pipeline

    summary = out / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text(encoding="utf-8"))["scores"]["tasks"]
    pipe = Pipeline.from_pretrained(model)
    return evaluate(pipe, SYNTH_TASK, test, out, batch_size=batch_size, progress=False,
                    model=str(model), max_new_tokens=max_new_tokens)["scores"]["tasks"]


def grpo_overrides(args: argparse.Namespace, model: Path, train: Path, valid: Path,
                   run_dir: Path) -> list[str]:
    """The ``key=value`` overrides of the shipped GRPO config for this run."""
    every = max(1, args.steps // 4)
    return [f"model.checkpoint={model}", f"data.train.0.manifest={train}",
            f"data.valid.manifest={valid}",
            f"run.out_dir={run_dir}", f"run.max_steps={args.steps}", "run.precision=fp32",
            "run.log_every=1", f"run.eval_every={every}", "run.save_every=0",
            "run.metric_items=100000", f"run.max_new_tokens={args.max_new_tokens}",
            "run.progress=false", "data.encoder_cache=true", f"parts.decoder={args.decoder}",
            "parts.projector=frozen",
            f"optim.lr={args.lr}", f"optim.warmup_steps={args.warmup}", "optim.grad_accum=1",
            f"grpo.group_size={args.group_size}", f"grpo.prompts={args.prompts}",
            "grpo.rewards={normalized_match: 1.0}", f"grpo.kl_coef={args.kl}",
            f"grpo.temperature={args.temperature}",
            f"grpo.max_new_tokens={args.max_new_tokens}", *args.set]


def train_grpo(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """Run the GRPO stage unless its export is there; returns {steps, train_s}."""
    from lalm.training import TrainConfig, train

    done = run_dir / "grpo_run.json"
    if done.is_file() and (run_dir / "export").is_dir():
        return json.loads(done.read_text(encoding="utf-8"))
    t = time.perf_counter()
    result = train(TrainConfig.from_file(GRPO_CONFIG, overrides))
    info = {"steps": result.step, "train_s": time.perf_counter() - t,
            "examples_per_s": result.examples_per_s}
    write_strict_json(done, info)
    return info


def stderr(p: float, n: int) -> float:
    """The standard error of an accuracy p over n items."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def table(before: dict[str, Any], after: dict[str, Any], tasks: list[str]) -> tuple[str, dict]:
    """The Markdown before/after table (accuracy +- s.e. per task, pooled) and its rows."""
    lines = ["| task | items | SFT (before) | GRPO (after) | change |", "|---|---:|---:|---:|---:|"]
    rows, hits = {}, [0.0, 0.0, 0]
    for task in tasks:
        b, a, n = before[task]["value"], after[task]["value"], before[task]["count"]
        rows[task] = {"items": n, "before": b, "after": a}
        hits[0], hits[1], hits[2] = hits[0] + b * n, hits[1] + a * n, hits[2] + n
        lines.append(f"| {task} | {n} | {b:.3f} ± {stderr(b, n):.3f} | "
                     f"{a:.3f} ± {stderr(a, n):.3f} | {a - b:+.3f} |")
    b, a, n = hits[0] / hits[2], hits[1] / hits[2], hits[2]
    rows["pooled"] = {"items": n, "before": b, "after": a}
    lines.append(f"| **pooled** | {n} | {b:.3f} ± {stderr(b, n):.3f} | "
                 f"{a:.3f} ± {stderr(a, n):.3f} | {a - b:+.3f} |")
    return "\n".join(lines) + "\n", rows


def reward_chart(log: Path, path: Path, window: int = 20) -> None:
    """The reward per step, its moving mean over `window` steps and the valid accuracy."""
    from lalm.eval.compare import pyplot, save_figure

    records = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    steps = [(r["step"], r["reward"]) for r in records if "reward" in r]
    valid = [(r["step"], r["accuracy"]) for r in records if "accuracy" in r]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs, ys = [s for s, _ in steps], [v for _, v in steps]
    ax.plot(xs, ys, color="0.75", lw=0.8, label="mean reward of the step's answers")
    mean = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1])
            for i in range(len(ys))]
    ax.plot(xs, mean, color="C0", lw=2, label=f"moving mean ({window} steps)")
    if valid:
        ax.plot(*zip(*valid), "o-", color="C3", label="valid accuracy (greedy)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("GRPO on lalm's default model (lalm-synth closed-answer tasks)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, help="SFT model (default: lalm's default model)")
    p.add_argument("--data", type=Path,
                   help="its lalm-synth folder (default: the default model's work folder's)")
    p.add_argument("--seed", type=int, default=0, help="lalm-synth seed of --data")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--test-items", type=int, default=50, help="test items per task")
    p.add_argument("--valid-items", type=int, default=5, help="valid items per task")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--kl", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--decoder", default="full", choices=["full", "lora"])
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--eval-max-new-tokens", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="more stage overrides")
    args = p.parse_args(argv)
    tasks = args.tasks.split(",")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(args.threads):
        if args.model is None:
            from lalm.demo import ensure_default_model

            args.model = ensure_default_model()
        data = args.data or default_model_dir().with_name(default_model_dir().name + ".work") \
            / "lalm-synth"
        # absolute audio paths: the training stage's data.train.N.audio_root is not applied to
        # lalm JSONL manifests (their reader resolves paths against the manifest's folder)
        train_items = [absolute(e, data) for e in read_manifest(data / "train.jsonl")
                       if e.task.name in tasks]
        if not train_items:
            raise SystemExit(f"{data / 'train.jsonl'} has no training items of {tasks}")
        write_manifest(out / "train.jsonl", train_items)
        synth = held_out(out / "synth", args.seed, tasks,
                         {"valid": args.valid_items, "test": args.test_items})
        before = evaluate_model(args.model, synth / "test.jsonl", out / "eval-before",
                                args.eval_batch_size, args.eval_max_new_tokens)
        overrides = grpo_overrides(args, args.model, out / "train.jsonl", synth / "valid.jsonl",
                                   out / "run")
        info = train_grpo(overrides, out / "run")
        after = evaluate_model(out / "run" / "export", synth / "test.jsonl", out / "eval-after",
                               args.eval_batch_size, args.eval_max_new_tokens)
    text, rows = table(before, after, tasks)
    (out / "grpo.md").write_text(text, encoding="utf-8")
    write_strict_json(out / "grpo.json", {"rows": rows, "training": info,
                                          "overrides": overrides, "train_items":
                                          len(train_items)})
    reward_chart(out / "run" / "log.jsonl", out / "reward.png")
    print(text + f"\nGRPO: {info['steps']} steps in {info['train_s']:.0f} s; "
          f"{out / 'grpo.md'}, {out / 'reward.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
