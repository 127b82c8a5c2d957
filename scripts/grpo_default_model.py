"""GRPO from lalm's default model on lalm-synth's closed-answer tasks: accuracy before and after
on held-out valid and test items, and the reward curve.

    python scripts/grpo_default_model.py --out runs/grpo-default

The starting point is lalm's default model (`lalm.demo.ensure_default_model`: Whisper tiny.en,
frozen, + a 4 x 192 Qwen2 decoder trained by SFT on lalm-synth small). The GRPO stage is the
shipped ``grpo`` config (``lalm/training/configs/stage4_grpo.yaml``) with the paths, sizes and
``--set`` overrides below, rewarded by ``normalized_match``, the same comparison as the
lalm-synth accuracy (`lalm.eval.synth_bench`). It trains on ``--train-items`` lalm-synth train
items per task of `TRAIN_TASKS` (made here in ``<out>/synth-train``; the first 50 are the
default model's own training items), by default only those in the held-out form (single
choice where the valid items are). The defaults are run D of docs/grpo.md (its table).

Held-out items: lalm-synth draws item k of a task and split from (seed, task, split, k) alone,
so ``--test-items`` test items per task (``--valid-items`` valid items) are made here in
``<out>/synth``; the first 10 test (5 valid) per task are the default model's own test (valid)
split, the rest are more of the same split; splits never share an item. Both models are scored
on the same items by `lalm.eval.synth_bench.SYNTH_TASK` (official mode), with a paired sign
test over the items. Choose settings with ``--valid-only`` (the test items are then neither made
nor scored) and ``--probe G`` (what sampling finds before training), never on the test split.

Writes ``<out>/grpo.md`` (the test table, standard errors, sign test), ``<out>/grpo.json`` (test
and valid rows) and ``<out>/reward.png`` (reward per step, its moving mean, the valid
accuracy). A finished part (data, evaluation, training) is reused by a rerun.
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
#: The tasks GRPO trains on by default: those where the SFT model's sampled answers (16 per
#: valid item, the stage's own sampler at temperature 1: ``--probe 16``) are right more often
#: than its greedy answer, on 30 valid items per task (docs/grpo.md). GRPO can only strengthen
#: what sampling finds; on the other tasks the greedy answer is already the better bet.
TRAIN_TASKS = ("event_count", "music_pitch", "tempo")
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


def in_held_out_form(items: list[Example], held_out_items: list[Example]) -> list[Example]:
    """The training `items` in the form of `held_out_items`: a task whose held-out items are
    single choice keeps its single-choice training items only (lalm-synth asks half of its
    training classification questions open, all valid and test ones as a choice)."""
    choice = {e.task.name for e in held_out_items if e.task.choices}
    return [e for e in items if e.task.choices or e.task.name not in choice]


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


def sampling_probe(overrides: list[str], manifest: Path, split: str, group_size: int,
                   prompts: int, seed: int) -> dict[str, dict[str, float]]:
    """What the stage's sampler finds on the `split` items of `manifest` before any GRPO step:
    per task the items, the mean reward of ``group_size`` sampled answers per item (the stage's
    own rollouts: its model, prompts, sampling options and rewards) and pass@G, the share of
    items with at least one answer of reward 1. GRPO can only strengthen what sampling finds."""
    from lalm.training import TrainConfig
    from lalm.training.build import build_dataset, build_model, load_stage_tokenizer
    from lalm.training.grpo import answer_text, rollout_seeds, sample_answers
    from lalm.training.rewards import score

    config = TrainConfig.from_file(GRPO_CONFIG, [
        *overrides, f"data.train.0.manifest={manifest}", f"data.train.0.split={split}",
        f"grpo.group_size={group_size}"])
    tokenizer = load_stage_tokenizer(config)
    model = build_model(config, tokenizer)
    data, _ = build_dataset(config.data.train, config, tokenizer, model.config.encoder.n_mels,
                            seed, model.encoder, model.audio_row_counts)
    sums: dict[str, list[float]] = {}
    for start in range(0, len(data), prompts):
        indices = range(start, min(start + prompts, len(data)))
        seeds = rollout_seeds(seed, 0, 0, start, len(indices) * group_size)
        answers = sample_answers(model, [data[i] for i in indices], tokenizer, config.grpo,
                                 seeds)
        examples = [data.examples[i] for i in indices for _ in range(group_size)]
        rewards, _ = score([answer_text(a, tokenizer) for a in answers], examples,
                           config.grpo.rewards)
        for k, i in enumerate(indices):
            group = rewards[k * group_size: (k + 1) * group_size]
            row = sums.setdefault(data.examples[i].task.name, [0, 0.0, 0])
            row[0], row[1] = row[0] + 1, row[1] + sum(group) / group_size
            row[2] += max(group) >= 1.0
    return {task: {"items": n, "sampled": total / n, "pass": hit / n}
            for task, (n, total, hit) in sorted(sums.items())}


def item_correct(eval_dir: Path) -> dict[str, bool]:
    """Per item id, whether the official lalm-synth accuracy (normalised match of the output
    text, `lalm.eval.synth_bench`) counts its answer right, from an evaluation folder's
    ``predictions.jsonl``."""
    from lalm.eval.evaluate import PREDICTIONS, read_predictions
    from lalm.eval.metrics import NORMALIZED_MATCH, accuracy

    return {r["id"]: accuracy([r["text"]], [r["reference"]], NORMALIZED_MATCH).score == 1.0
            for r in read_predictions(eval_dir / PREDICTIONS)}


def sign_test(before: dict[str, bool], after: dict[str, bool]) -> dict[str, float]:
    """The paired comparison of two scorings of the same items: answers that turned right, that
    turned wrong, and the two-sided exact sign test p over the changed items."""
    if before.keys() != after.keys():
        raise ValueError("sign_test: the two evaluations scored different items")
    gained = sum(after[k] and not before[k] for k in before)
    lost = sum(before[k] and not after[k] for k in before)
    n, low = gained + lost, min(gained, lost)
    tail = sum(math.comb(n, k) for k in range(low + 1)) / 2 ** n if n else 1.0
    return {"gained": gained, "lost": lost, "p": min(1.0, 2 * tail)}


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
            f"parts.projector={args.projector}",
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


def table(before: dict[str, Any], after: dict[str, Any], tasks: list[str],
          paired: dict[str, float] | None = None) -> tuple[str, dict]:
    """The Markdown before/after table (accuracy +- s.e. per task, pooled) and its rows; with
    `paired` (`sign_test` of the pooled items) a line under it."""
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
    if paired is not None:
        rows["pooled"]["paired"] = paired
        lines.append(f"\nPer item: {paired['gained']} answers turned right, {paired['lost']} "
                     f"turned wrong (two-sided sign test p = {paired['p']:.3g}).")
    return "\n".join(lines) + "\n", rows


def compare(model: Path, export: Path, manifest: Path, out: Path, name: str,
            args: argparse.Namespace, tasks: list[str]) -> tuple[str, dict]:
    """Score the SFT model and the GRPO export on `manifest` (folders ``<out>/eval-<name>-before``
    and ``-after``); their `table` with the paired sign test over the items."""
    dirs = [out / f"eval-{name}-before", out / f"eval-{name}-after"]
    scores = [evaluate_model(m, manifest, d, args.eval_batch_size, args.eval_max_new_tokens)
              for m, d in zip((model, export), dirs)]
    return table(*scores, tasks, sign_test(*(item_correct(d) for d in dirs)))


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
                   help="its lalm-synth folder, the training items with --train-items 0 "
                        "(default: the default model's work folder's)")
    p.add_argument("--seed", type=int, default=0, help="lalm-synth seed of --data")
    p.add_argument("--tasks", default=",".join(TASKS), help="held-out tasks")
    p.add_argument("--train-tasks",
                   help="tasks GRPO trains on (default: those of --tasks in TRAIN_TASKS)")
    p.add_argument("--train-items", type=int, default=150,
                   help="lalm-synth train items per task made here (the first 50 are the "
                        "default model's own); 0: the model's training items")
    p.add_argument("--held-out-form", action=argparse.BooleanOptionalAction, default=True,
                   help="train only on items in the form the held-out items ask: the "
                        "single-choice ones of the tasks whose valid items are single choice")
    p.add_argument("--test-items", type=int, default=50, help="test items per task")
    p.add_argument("--valid-items", type=int, default=30, help="valid items per task")
    p.add_argument("--valid-only", action="store_true",
                   help="score the valid items only (choosing settings: the test split unused)")
    p.add_argument("--probe", type=int, metavar="G",
                   help="only measure greedy accuracy, sampled accuracy and pass@G of the SFT "
                        "model on the valid items (probe.json), then stop")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--kl", type=float, default=0.02)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--decoder", default="full", choices=["full", "lora"])
    p.add_argument("--projector", default="frozen", choices=["full", "frozen"])
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--eval-max-new-tokens", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="more stage overrides")
    args = p.parse_args(argv)
    tasks = args.tasks.split(",")
    train_tasks = (args.train_tasks.split(",") if args.train_tasks
                   else [t for t in tasks if t in TRAIN_TASKS])
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(args.threads):
        if args.model is None:
            from lalm.demo import ensure_default_model

            args.model = ensure_default_model()
        data = args.data or default_model_dir().with_name(default_model_dir().name + ".work") \
            / "lalm-synth"
        if args.train_items:
            data = held_out(out / "synth-train", args.seed, train_tasks,
                            {"train": args.train_items})
        counts = {"valid": args.valid_items}
        if not (args.valid_only or args.probe):
            counts["test"] = args.test_items
        synth = held_out(out / "synth", args.seed, tasks, counts)
        # absolute audio paths: the training stage's data.train.N.audio_root is not applied to
        # lalm JSONL manifests (their reader resolves paths against the manifest's folder)
        train_items = [absolute(e, data) for e in read_manifest(data / "train.jsonl")
                       if e.task.name in train_tasks]
        if args.held_out_form:
            train_items = in_held_out_form(train_items, read_manifest(synth / "valid.jsonl"))
        if not train_items:
            raise SystemExit(f"{data / 'train.jsonl'} has no training items of {train_tasks}")
        write_manifest(out / "train.jsonl", train_items)
        overrides = grpo_overrides(args, args.model, out / "train.jsonl", synth / "valid.jsonl",
                                   out / "run")
        if args.probe:
            greedy = evaluate_model(args.model, synth / "valid.jsonl", out / "eval-valid-before",
                                    args.eval_batch_size, args.eval_max_new_tokens)
            probe = sampling_probe(overrides, synth / "valid.jsonl", "valid", args.probe,
                                   args.prompts, args.seed)
            for task, row in probe.items():
                row["greedy"] = greedy[task]["value"]
            write_strict_json(out / "probe.json", probe)
            print(f"| task | items | greedy | sampled (mean of {args.probe}) | "
                  f"pass@{args.probe} |\n|---|---:|---:|---:|---:|")
            for task, row in probe.items():
                print(f"| {task} | {row['items']} | {row['greedy']:.3f} | {row['sampled']:.3f} "
                      f"| {row['pass']:.3f} |")
            return 0
        info = train_grpo(overrides, out / "run")
        export = out / "run" / "export"
        valid_text, valid_rows = compare(args.model, export, synth / "valid.jsonl", out,
                                         "valid", args, tasks)
        text, rows = valid_text, {}
        if not args.valid_only:
            text, rows = compare(args.model, export, synth / "test.jsonl", out, "test", args,
                                 tasks)
    (out / "grpo.md").write_text(text, encoding="utf-8")
    write_strict_json(out / "grpo.json", {"rows": rows, "valid_rows": valid_rows,
                                          "training": info, "overrides": overrides,
                                          "train_items": len(train_items)})
    reward_chart(out / "run" / "log.jsonl", out / "reward.png")
    print(("valid:\n" + valid_text + "\ntest:\n" if rows else "valid:\n") + text
          + f"\nGRPO: {info['steps']} steps in {info['train_s']:.0f} s; "
          f"{out / 'grpo.md'}, {out / 'reward.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
