"""The evaluation runner: a task's items through the pipeline, predictions to disk, then scores.

    pipe = Pipeline.from_pretrained("runs/default/export")
    summary = evaluate(pipe, "librispeech", "data", "runs/eval/librispeech")

Files in ``out_dir``:

* ``run.json`` - what the predictions belong to (task, data, family, decoding options); a
  rerun with other settings is refused instead of mixing two runs in one file;
* ``predictions.jsonl`` - one record per item (the item's fields, ``response``: the output as
  the official script reads it, ``text``: the output without tags, ``finish_reason``), appended
  and flushed batch by batch;
* ``summary.json`` - the scores with their versions, written atomically at the end.

Resume: a rerun reads ``predictions.jsonl``, drops a last line cut short by the interruption
and generates only the items not yet there; items run in data order, so the file and the
scores equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lalm import __version__
from lalm.data.manifest import atomic_write
from lalm.errors import DataError
from lalm.eval.tasks import EvalItem, EvalTask, ScoreContext, get_task
from lalm.generation import GenerationResult, Pipeline
from lalm.prompt import Family

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
    """The output as the family's official scripts decode it: Qwen-Audio keeps special tokens
    (``skip_special_tokens=False``), Qwen2-Audio drops them; both without the stop token."""
    if pipe.family is Family.QWEN_AUDIO:
        return result.text.strip()
    tokens = result.tokens[:-1] if result.finish_reason == "stop" else result.tokens
    return pipe.tokenizer.decode(tokens, skip_special=True).strip()


def _run_header(task: EvalTask, data: Path, pipe: Pipeline, options: Any) -> dict[str, Any]:
    return {"task": task.name, "data": str(data.resolve()), "family": pipe.family.value,
            "options": {k: list(v) if isinstance(v, tuple) else v
                        for k, v in asdict(options).items()}}


def _check_run(out_dir: Path, header: dict[str, Any]) -> None:
    path = out_dir / RUN
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != header:
            raise DataError(f"{out_dir} holds predictions of another run ({old['task']} on "
                            f"{old['data']}, {old['family']}, other options); use a new folder")
    else:
        atomic_write(path, (json.dumps(header, indent=1) + "\n").encode("utf-8"))


def evaluate(pipe: Pipeline, task: str | EvalTask, data: str | os.PathLike[str],
             out_dir: str | os.PathLike[str], scoring: str = "official", batch_size: int = 8,
             limit: int | None = None, judge: Any = None, progress: bool = True,
             model: str | None = None, max_new_tokens: int | None = None) -> dict[str, Any]:
    """Run a task's items through the pipeline (resuming), write predictions, score them.

    Args:
        pipe: the model with its tokenizer (its family picks the prompts).
        task: a built-in task name (`lalm.eval.tasks.task_names`) or an `EvalTask`.
        data: the task's data (file or folder, see the task).
        out_dir: where ``run.json``, ``predictions.jsonl`` and ``summary.json`` go.
        scoring: ``"official"`` or ``"strict"`` (`lalm.eval.tasks.ScoreContext`).
        batch_size: prompts per forward pass.
        limit: only the first `limit` items.
        judge: the AIR-Bench chat judge (`lalm.eval.airbench.ChatJudge`), if the task needs one.
        progress: show a tqdm bar on stderr.
        model: the model's name in the summary (e.g. its folder).
        max_new_tokens: override the task's official budget (recorded in ``run.json``).

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        DataError, PromptError, AudioError, ScoringError: bad data, prompts, audio or scores.
    """
    task = get_task(task) if isinstance(task, str) else task
    context = ScoreContext(pipe.family, scoring, judge)
    data, out = Path(data), Path(out_dir)
    loaded = task.read(data)
    items: list[EvalItem] = loaded.items[:limit] if limit is not None else loaded.items
    options = task.options(pipe.family, pipe.tokenizer.eod_id)
    if max_new_tokens is not None:
        options = replace(options, max_new_tokens=max_new_tokens)
    out.mkdir(parents=True, exist_ok=True)
    _check_run(out, _run_header(task, data, pipe, options))
    path = out / PREDICTIONS
    done = {r["id"]: r for r in read_predictions(path)}
    todo = [item for item in items if item.id not in done]
    requests = [task.request(item, pipe.family) for item in todo]  # prompt errors before work
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="item",
                   desc=task.name, file=sys.stderr)
    try:
        with open(path, "a", encoding="utf-8") as f:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                results = pipe.generate(requests[start:start + batch_size], options)
                for item, result in zip(chunk, results):
                    record = {**item.record(), "response": response_text(pipe, result),
                              "text": result.parsed.text if result.parsed else result.text,
                              "finish_reason": result.finish_reason}
                    done[item.id] = record
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    records = [done[item.id] for item in items]
    summary = {"task": task.name, "description": task.description, "model": model,
               "family": pipe.family.value, "data": str(data), "scoring": scoring,
               "items": len(records), "skipped": loaded.skipped, "lalm_version": __version__,
               "scores": task.score(records, context)}
    atomic_write(out / SUMMARY, (json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
                 .encode("utf-8"))
    return summary


def rescore(task: str | EvalTask, out_dir: str | os.PathLike[str], family: Family,
            scoring: str, judge: Any = None) -> dict[str, Any]:
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
