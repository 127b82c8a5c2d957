"""The lalm-synth benchmark report: run every lalm-synth task and its AIR-Bench export through
the evaluation runner, then write one table, one JSON file and one chart.

    lalm bench-synth --model runs/default/export --data data/lalm-synth --out runs/bench

The per-task procedure (metrics, chart scores) is `lalm.eval.synth_bench`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lalm.eval.compare import pyplot, save_figure
from lalm.eval.evaluate import evaluate, rescore
from lalm.eval.report import ModelInfo, describe_model, write_strict_json
from lalm.eval.synth_bench import SYNTH_TASK
from lalm.files import atomic_write


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
