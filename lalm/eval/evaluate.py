"""The evaluation runner: a task's items through the pipeline, predictions to disk, then scores.

    pipe = Pipeline.from_pretrained("runs/default/export")
    summary = evaluate(pipe, "librispeech", "data", "runs/eval/export-1a2b3c4d/librispeech",
                       model="runs/default/export")

Files in ``out_dir``:

* ``run.json`` - the run key: what the predictions belong to (task, data hash, the model's
  weights / config / tokenizer hashes, family, dtype, decoding options; `lalm.eval.report`); a
  rerun with anything else is refused instead of mixing two runs in one file;
* ``predictions.jsonl`` - one record per item (the item's fields, ``prompt_text``: the prompt
  as the model got it, audio as its placeholder; ``raw_output``: the generated tokens decoded
  with every special token, stop token included; ``response``: the output as the official
  script reads it; ``text``: the output without tags; ``finish_reason``), appended and flushed
  batch by batch;
* ``summary.json`` - the self-describing report (`lalm.eval.report`): model, data, prompts,
  options, scorers and their package versions, lalm's version, wall time and the scores;
  strict JSON (NaN becomes null, listed under ``null_scores``), written atomically at the end.

Batching: items go to `Pipeline.generate` ``batch_size`` at a time, in data order (greedy
decoding gives the same predictions at any batch size). The progress bar counts items, with
the rate of this run (items/s) and the time left.

Resume: a rerun with the same key reads ``predictions.jsonl``, drops a last line cut short by
the interruption and generates only the items not yet there; items run in data order, so the
file and the scores equal those of an uninterrupted run. The kept records must carry the
prompt the task builds now, else the rerun is refused (a lalm upgrade changed the prompt).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lalm.errors import DataError
from lalm.eval.judge import ChatJudge
from lalm.eval.report import (
    REPORT_VERSION,
    ModelInfo,
    data_sha256,
    describe_model,
    environment,
    package_versions,
    scorer_procedures,
    write_strict_json,
)
from lalm.eval.tasks import EvalItem, EvalTask, ScoreContext, get_task
from lalm.files import atomic_write
from lalm.generation import GenerationOptions, GenerationResult, Pipeline, Request
from lalm.prompt import FamilySpec

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The complete records of a predictions file; a trailing partial line is cut off the file.

    Raises:
        DataError: a malformed line before the last one (the file is not one this runner wrote).
    """
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    records = []
    for n, line in enumerate(complete, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not a prediction record ({e})") from e
    if tail:  # written without its newline: the run stopped mid-write
        with open(path, "r+b") as f:
            f.truncate(len(raw) - len(tail))
    return records


def response_text(pipe: Pipeline, result: GenerationResult) -> str:
    """The output as the family's official scripts decode it (`FamilySpec.response_skips_special`):
    Qwen-Audio keeps special tokens (``skip_special_tokens=False``), Qwen2-Audio drops them; both
    without the stop token."""
    if not pipe.family.response_skips_special:
        return result.text.strip()
    tokens = result.tokens[:-1] if result.finish_reason == "stop" else result.tokens
    return pipe.tokenizer.decode(tokens, skip_special=True).strip()


def options_dict(options: GenerationOptions) -> dict[str, Any]:
    """Decoding options as JSON (tuples as lists); `GenerationOptions(**d)` rebuilds them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}


def run_key(task: EvalTask, data_hash: str, model: ModelInfo,
            options: GenerationOptions) -> dict[str, Any]:
    """What a run's predictions depend on (``run.json``): task, data, model, options."""
    return {"task": task.name, "data_sha256": data_hash, "model": model.key(),
            "options": options_dict(options)}


def _check_run(out_dir: Path, key: dict[str, Any]) -> None:
    path = out_dir / RUN
    if not path.exists():
        atomic_write(path, (json.dumps(key, indent=1) + "\n").encode("utf-8"))
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    if old == key:
        return
    differ = [k for k in key if old.get(k) != key[k]]
    if "model" in differ and isinstance(old.get("model"), dict):
        differ[differ.index("model")] = "model (" + ", ".join(
            k for k in key["model"] if old["model"].get(k) != key["model"][k]) + ")"
    raise DataError(f"{out_dir} holds predictions of another run (its {', '.join(differ)} "
                    f"differ{'s' if len(differ) == 1 else ''}); use another --out folder")


def _check_prompts(out_dir: Path, done: dict[str, dict[str, Any]], items: list[EvalItem],
                   requests: list[Request]) -> None:
    for item, request in zip(items, requests):
        kept = done.get(item.id)
        if kept is not None and kept.get("prompt_text") != request.prompt.text:
            raise DataError(f"{out_dir}: item {item.id} was predicted from another prompt "
                            f"({kept.get('prompt_text')!r}, now {request.prompt.text!r}); "
                            f"use another --out folder")


def _record(pipe: Pipeline, item: EvalItem, request: Request,
            result: GenerationResult) -> dict[str, Any]:
    return {**item.record(), "prompt_text": request.prompt.text,
            "raw_output": pipe.tokenizer.decode(result.tokens, skip_special=False),
            "response": response_text(pipe, result),
            "text": result.parsed.text if result.parsed else result.text,
            "finish_reason": result.finish_reason}


def _prompts(items: list[EvalItem], requests: list[Request]) -> dict[str, str]:
    """The first prompt of each scoring group (items of a group share the template)."""
    out: dict[str, str] = {}
    for item, request in zip(items, requests):
        out.setdefault(item.source, request.prompt.text)
    return out


def _judge(judge: ChatJudge | None) -> dict[str, Any] | None:
    """The judge endpoint and the user's overrides (each suite's scores record its own
    settings and prompt hash: `ChatJudge.describe`)."""
    if judge is None:
        return None
    return {"base_url": judge.base_url, "model": judge.model, "seed": judge.seed,
            "temperature_override": judge.temperature, "samples_override": judge.samples,
            "embedder": judge.embedder.describe() if judge.embedder is not None else None}


def evaluate(pipe: Pipeline, task: str | EvalTask, data: str | os.PathLike[str],
             out_dir: str | os.PathLike[str], scoring: str = "official", batch_size: int = 8,
             limit: int | None = None, judge: ChatJudge | None = None, progress: bool = True,
             model: str | ModelInfo | None = None,
             max_new_tokens: int | None = None) -> dict[str, Any]:
    """Run a task's items through the pipeline (resuming), write predictions, score them.

    Args:
        pipe: the model with its tokenizer (its family picks the prompts).
        task: a built-in task name (`lalm.eval.tasks.task_names`) or an `EvalTask`.
        data: the task's data (file or folder, see the task).
        out_dir: where ``run.json``, ``predictions.jsonl`` and ``summary.json`` go.
        scoring: ``"official"`` or ``"strict"`` (`lalm.eval.tasks.ScoreContext`).
        batch_size: prompts per forward pass.
        limit: only the first `limit` items.
        judge: the LLM judge (`lalm.eval.judge.ChatJudge`), for the tasks that need one.
        progress: show a tqdm bar on stderr (items, items/s, time left).
        model: the model's name or checkpoint folder (as the user gave it), or its
            `lalm.eval.report.ModelInfo` from `describe_model` (saves hashing the weights again).
        max_new_tokens: override the task's official budget (part of the run key).

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        DataError, PromptError, AudioError, ScoringError: bad data, prompts, audio or scores;
            DataError also for an ``out_dir`` holding another run's predictions.
    """
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    task = get_task(task) if isinstance(task, str) else task
    context = ScoreContext(pipe.family, scoring, judge)
    data, out = Path(data), Path(out_dir)
    loaded = task.read(data)
    items: list[EvalItem] = loaded.items[:limit] if limit is not None else loaded.items
    options = task.options(pipe.family, pipe.tokenizer.eod_id)
    if max_new_tokens is not None:
        options = replace(options, max_new_tokens=max_new_tokens)
    info = model if isinstance(model, ModelInfo) else describe_model(pipe, model)
    data_hash = data_sha256(loaded.items, data)
    requests = [task.request(item, pipe.family) for item in items]  # prompt errors before work
    out.mkdir(parents=True, exist_ok=True)
    _check_run(out, run_key(task, data_hash, info, options))
    path = out / PREDICTIONS
    done = {r["id"]: r for r in read_predictions(path)}
    _check_prompts(out, done, items, requests)
    todo = [(item, request) for item, request in zip(items, requests) if item.id not in done]
    t_generate = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="item",
                   desc=task.name, file=sys.stderr)
    try:
        with open(path, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                results = pipe.generate([r for _, r in chunk], options)
                for (item, request), result in zip(chunk, results):
                    done[item.id] = _record(pipe, item, request, result)
                    f.write(json.dumps(done[item.id], ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    t_score = time.perf_counter()
    records = [done[item.id] for item in items]
    scores = task.score(records, context)
    summary = {
        "report_version": REPORT_VERSION, "task": task.name, "description": task.description,
        "model": info.to_dict(),
        "data": {"path": str(data.resolve()), "items": len(loaded.items),
                 "sha256": data_hash, "limit": limit, "evaluated": len(records),
                 "skipped": loaded.skipped},
        "prompts": _prompts(items, requests), "options": options_dict(options),
        "stop_token_ids_used": list(pipe.stop_ids(options)), "batch_size": batch_size,
        "scoring": {"mode": scoring, "procedures": scorer_procedures(scores),
                    "packages": package_versions(), "judge": _judge(judge)},
        "environment": environment(),
        "wall_time_s": {"generated": len(todo), "generate": t_score - t_generate,
                        "score": time.perf_counter() - t_score,
                        "total": time.perf_counter() - t0},
        "started_at": started.isoformat(timespec="seconds"),
        "scores": scores,
    }
    write_strict_json(out / SUMMARY, summary)
    return summary


def rescore(task: str | EvalTask, out_dir: str | os.PathLike[str], family: FamilySpec,
            scoring: str, judge: ChatJudge | None = None) -> dict[str, Any]:
    """Score the predictions already in ``out_dir`` again, e.g. in the other scoring mode.

    Returns:
        The task's scores (nothing is written).

    Raises:
        DataError: no predictions there.
    """
    task = get_task(task) if isinstance(task, str) else task
    records = read_predictions(Path(out_dir) / PREDICTIONS)
    if not records:
        raise DataError(f"no predictions in {out_dir}")
    return task.score(records, ScoreContext(family, scoring, judge))
