"""The lalm-synth benchmark: every lalm-synth task and its AIR-Bench export, one table and chart.

    lalm bench-synth --model runs/default/export --data data/lalm-synth --out runs/bench

lalm-synth is lalm's own benchmark, so its procedure is defined here (version
``lalm-synth-v1``). Per task (the items' ``source`` is their task name):

========================= ============================== =====================================
tasks                     metric                         chart score (0-100, higher is better)
========================= ============================== =====================================
asr                       WER/CER per spoken language    100 x (1 - mean error rate), >= 0
                          (the family's official ASR
                          procedure), their mean
s2tt                      BLEU per target language,      the mean BLEU
                          their mean
srwt                      WER of the words, and the      100 x (1 - WER), >= 0
                          average shift of aligned words
mixed_caption             CIDEr-D (basic-normalised,     10 x CIDEr-D, <= 100
                          whitespace tokens)
everything else           accuracy against the target    100 x accuracy
========================= ============================== =====================================

Accuracy: ``official`` compares after Whisper's basic normaliser (case, punctuation and spacing
ignored, `NORMALIZED_MATCH`), ``strict`` the raw response exactly (`EXACT_MATCH`). Timed words:
a Qwen-Audio answer continues the prompt's primed ``<|0.00|>``, which is put back in front
before parsing; a Qwen2-Audio answer is plain ``word (start-end)`` text.

The AIR-Bench export (``airbench/`` beside the manifests) is run as ``airbench-foundation``
and reported in both scoring modes (one set of predictions, scored twice).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lalm import prompt as P
from lalm.data.manifest import Example, atomic_write, iter_manifest
from lalm.data.render import render_prompt, task_spec
from lalm.errors import DataError, PromptError, ScoringError
from lalm.eval.analysis import average_shift
from lalm.eval.caption import cider_d
from lalm.eval.metrics import (
    ASR_QWEN_AUDIO,
    EXACT_MATCH,
    NORMALIZED_MATCH,
    accuracy,
    bleu,
    error_rate,
)
from lalm.eval.normalizers import basic_normalize
from lalm.eval.tasks import STRICT, EvalData, EvalItem, EvalTask, ScoreContext, groups
from lalm.generation import Request

if TYPE_CHECKING:
    from lalm.eval.report import ModelInfo

SYNTH_VERSION = "lalm-synth-v1"
_V2_TIMED_WORD = re.compile(r"(\S+) \((\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\)")


def _read(data: Path) -> EvalData:
    """A lalm manifest, or a lalm-synth folder (its ``test.jsonl``)."""
    manifest = data / "test.jsonl" if data.is_dir() else data
    root = manifest.parent
    items = [EvalItem(ex.id, tuple(str((root / a.path).resolve()) for a in ex.audios),
                      ex.target, ex.task.name,
                      {"example": ex.to_dict(), "audio_root": str(root.resolve())})
             for ex in iter_manifest(manifest)]
    if not items:
        raise DataError(f"{manifest} holds no examples")
    return EvalData(items)


def _request(item: EvalItem, family: P.FamilySpec) -> Request:
    example = Example.from_dict(item.fields["example"])
    return Request(render_prompt(example, family, item.fields["audio_root"]),
                   task_spec(example, family))


def _timed_words(record: dict[str, Any], family: P.FamilySpec) -> str:
    """A response's timed words in the tag form `average_shift` reads ("" if none parse): the
    SRWT tags of a family with task tags (its prompt primed 0.00), else the plain-text form
    `lalm.data.render.render_target` writes."""
    if family.task_tags:
        return P.timestamp_tag(0.0) + record["response"]
    words = [P.TimedWord(w, float(s), float(e))
             for w, s, e in _V2_TIMED_WORD.findall(record["response"])]
    try:
        return P.format_timed_words(words)
    except PromptError:  # times outside [0, 30] s: no usable answer
        return ""


def _plain_words(record: dict[str, Any], family: P.FamilySpec) -> str:
    if family.task_tags:
        return record["text"]
    return " ".join(w for w, _, _ in _V2_TIMED_WORD.findall(record["response"]))


def _row(metric: str, value: float, score: float, count: int, version: str,
         **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "value": value, "score": max(0.0, min(100.0, score)),
            "count": count, "version": version, **extra}


def _score_task(name: str, rs: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    examples = [Example.from_dict(r["example"]) for r in rs]
    if name == "asr":
        version = ctx.family.asr_scoring
        by_lang: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by_lang.setdefault(ex.task.audio_language or "unknown", []).append(i)
        rates = {lang: error_rate([rs[i]["response"] for i in idx],
                                  [rs[i]["reference"] for i in idx], lang, version).score
                 for lang, idx in sorted(by_lang.items())}
        mean = sum(rates.values()) / len(rates)
        return _row("error rate", mean, 100 * (1 - mean), len(rs), version, per_language=rates)
    if name == "s2tt":
        by_target: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by_target.setdefault(ex.task.output_language, []).append(i)
        scores = {lang: bleu([rs[i]["response"] for i in idx], [rs[i]["reference"] for i in idx],
                             lang).score for lang, idx in sorted(by_target.items())}
        mean = sum(scores.values()) / len(scores)
        return _row("BLEU", mean, mean, len(rs), SYNTH_VERSION, per_language=scores)
    if name == "srwt":
        wer = error_rate([_plain_words(r, ctx.family) for r in rs],
                         [r["reference"] for r in rs], "en", ASR_QWEN_AUDIO).score
        refs = [P.format_timed_words([P.TimedWord(w.word, w.start, w.end) for w in ex.words
                                      if w.word is not None]) for ex in examples]
        try:
            shift = average_shift([_timed_words(r, ctx.family) for r in rs], refs)
            aas: float | None = shift.score
        except ScoringError:  # no word aligned anywhere
            aas = None
        return _row("WER", wer, 100 * (1 - wer), len(rs), SYNTH_VERSION, average_shift_s=aas)
    if name == "mixed_caption":
        result = cider_d([basic_normalize(r["response"]) for r in rs],
                         [[basic_normalize(r["reference"])] for r in rs], tokenize="none")
        return _row("CIDEr-D", result.score, 10 * result.score, len(rs), result.version)
    version = EXACT_MATCH if ctx.scoring == STRICT else NORMALIZED_MATCH
    field = "response" if ctx.scoring == STRICT else "text"
    acc = accuracy([r[field] for r in rs], [r["reference"] for r in rs], version).score
    return _row("accuracy", acc, 100 * acc, len(rs), version)


def _score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    return {"version": SYNTH_VERSION,
            "tasks": {name: {"category": rs[0]["example"]["metadata"].get("category"),
                             **_score_task(name, rs, ctx)}
                      for name, rs in groups(records).items()}}


#: lalm-synth as an evaluation task (all tasks of a manifest, scored per task).
SYNTH_TASK = EvalTask("lalm-synth", "every lalm-synth task of a manifest (per-task scores)",
                      _read, _request, _score)


@dataclass(frozen=True)
class BenchReport:
    """The benchmark's rows and where its files went.

    Attributes:
        rows: one dict per task (task, category, metric, value, score, count) plus AIR-Bench
            rows (one per scoring mode).
        markdown: the Markdown table file.
        json: the JSON file (rows and both summaries).
        chart: the bar chart PNG.
    """

    rows: list[dict[str, Any]]
    markdown: Path
    json: Path
    chart: Path


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (value with 4 significant digits, score with one decimal)."""
    lines = ["| task | category | metric | value | score | items |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['category']} | {r['metric']} | {r['value']:.4g} | "
                     f"{r['score']:.1f} | {r['count']} |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """A PNG bar chart of the rows' scores, coloured by category (needs matplotlib)."""
    from lalm.eval.compare import pyplot, save_figure

    plt = pyplot()
    categories = list(dict.fromkeys(r["category"] for r in rows))
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(categories)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.5))
    ax.bar(range(len(rows)), [r["score"] for r in rows],
           color=[colors[r["category"]] for r in rows])
    ax.set_xticks(range(len(rows)), [r["task"] for r in rows], rotation=60, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("score (0-100, higher is better)")
    ax.set_title(title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[c]) for c in categories]
    ax.legend(handles, categories, fontsize=8, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)


def run_synth_bench(pipe: Any, data: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                    scoring: str = "official", batch_size: int = 8, limit: int | None = None,
                    progress: bool = True, model: str | ModelInfo | None = None,
                    max_new_tokens: int | None = None) -> BenchReport:
    """Evaluate a model on every lalm-synth task and on the AIR-Bench export; write the report.

    Args:
        pipe: the `lalm.generation.Pipeline`.
        data: a lalm-synth folder (``test.jsonl``, ``airbench/``).
        out_dir: output folder: ``lalm-synth/`` and ``airbench/`` run folders (resumable),
            ``bench.md``, ``bench.json``, ``bench.png``.
        scoring: the mode of the per-task rows (AIR-Bench is reported in both).
        batch_size, limit, progress, model, max_new_tokens: as for
            `lalm.eval.evaluate.evaluate` (the model's name or its `ModelInfo`).

    Returns:
        The `BenchReport`.
    """
    from lalm.eval.evaluate import evaluate, rescore
    from lalm.eval.report import ModelInfo, describe_model, write_strict_json

    data, out = Path(data), Path(out_dir)
    # the weights hashed once for both runs
    info = model if isinstance(model, ModelInfo) else describe_model(pipe, model)
    synth = evaluate(pipe, SYNTH_TASK, data, out / "lalm-synth", scoring, batch_size, limit,
                     progress=progress, model=info, max_new_tokens=max_new_tokens)
    rows = [{"task": name, **s} for name, s in synth["scores"]["tasks"].items()]
    summaries: dict[str, Any] = {"lalm-synth": synth}
    airbench = data / "airbench"
    if (airbench / "Foundation_meta.json").exists():
        run_dir = out / "airbench"
        summaries["airbench"] = evaluate(pipe, "airbench-foundation", airbench, run_dir,
                                         "official", batch_size, limit, progress=progress,
                                         model=info, max_new_tokens=max_new_tokens)
        for mode in ("official", "strict"):
            s = rescore("airbench-foundation", run_dir, pipe.family, mode)
            summaries[f"airbench-{mode}"] = s
            rows.append({"task": f"airbench ({mode})", "category": "air-bench",
                         "metric": "accuracy", "value": s["overall"],
                         "score": 100 * s["overall"] if s["scored"] else 0.0,
                         "count": s["scored"] + (0 if mode == "strict" else s["failed"]),
                         "version": s["version"]})
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    md, js, png = out / "bench.md", out / "bench.json", out / "bench.png"
    title = f"lalm-synth benchmark: {info.name or info.label} ({pipe.family.name}, {scoring})"
    atomic_write(md, f"# {title}\n\n{table}".encode())
    write_strict_json(js, {"rows": rows, "summaries": summaries})
    bar_chart(rows, png, title)
    return BenchReport(rows, md, js, png)
