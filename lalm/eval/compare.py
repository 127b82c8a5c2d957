"""`lalm eval compare`: the per-task metrics of several evaluation runs side by side.

    comparison = compare_runs(["runs/eval/export-1a2b3c4d", "runs/eval/export-5e6f7a8b"])
    md, js, png = write_comparison(comparison, "runs/eval/compare")

A run folder is one ``lalm eval`` output (its ``summary.json``) or a folder of them (e.g. one
model's ``runs/eval/<model>/<task>`` folders); each run folder given is one column. A metric is
every number in a task's scores except counts (``count``, ``scored``, ``failed``), named by its
dotted path (``error_rate.librispeech_test_clean``).

Two runs of a task are compared only when their numbers mean the same thing: the same data
(content hash and number of items evaluated) and the same scorers (scoring mode, procedure
versions and scorer package versions, `lalm.eval.report`). Otherwise `compare_runs` raises
`ComparisonError` naming the difference; ``force=True`` compares anyway and lists the
differences in the output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lalm.errors import ComparisonError, DataError
from lalm.eval.report import REPORT_VERSION, write_strict_json
from lalm.files import atomic_write, write_atomic

SUMMARY = "summary.json"
_COUNTS = ("count", "scored", "failed")
#: Report fields that must agree for a task's numbers to be comparable.
_MUST_AGREE = (("data", "sha256"), ("data", "evaluated"), ("scoring", "mode"),
               ("scoring", "procedures"), ("scoring", "packages"))


@dataclass(frozen=True)
class Comparison:
    """Runs side by side.

    Attributes:
        labels: one column name per run folder (model name and weights hash prefix).
        folders: the run folders, in column order.
        rows: one per (task, metric): ``{"task", "metric", "values": [float | None per
            column]}`` (None: the column has no run of the task or no such metric).
        columns: per column, per task: the run's folder, model and data (from its report).
        differences: what disagreed and was compared anyway (``force``); empty otherwise.
    """

    labels: list[str]
    folders: list[str]
    rows: list[dict[str, Any]]
    columns: list[dict[str, dict[str, Any]]]
    differences: list[str]


def load_reports(folder: str | os.PathLike[str]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The reports of a run folder by task: its own ``summary.json``, else its subfolders'.

    Raises:
        ComparisonError: no report there, a summary without a report (an older lalm), or two
            runs of one task in the folder.
    """
    folder = Path(folder)
    paths = [folder / SUMMARY] if (folder / SUMMARY).is_file() else sorted(
        folder.glob(f"*/{SUMMARY}"))
    if not paths:
        raise ComparisonError(f"{folder}: no {SUMMARY} in it or in its subfolders (not a "
                              f"`lalm eval` output folder)")
    reports: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ComparisonError(f"{path}: not readable JSON ({e})") from e
        if report.get("report_version") != REPORT_VERSION:
            raise ComparisonError(f"{path} is not a {REPORT_VERSION} report (written by an "
                                  f"older lalm?): run `lalm eval` again into a new folder")
        if report["task"] in reports:
            raise ComparisonError(f"{folder} holds two runs of {report['task']} "
                                  f"({reports[report['task']][0].parent}, {path.parent}); "
                                  f"give the run folders themselves")
        reports[report["task"]] = (path.parent, report)
    return reports


def metrics(scores: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a task's scores but the counts, by dotted path (NaN stays None)."""
    out: dict[str, float] = {}
    if isinstance(scores, dict):
        for key, value in scores.items():
            if key not in _COUNTS:
                out.update(metrics(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(scores, (int, float)) and not isinstance(scores, bool) and prefix:
        out[prefix] = float(scores)
    return out


def _field(report: dict[str, Any], path: tuple[str, str]) -> Any:
    return report.get(path[0], {}).get(path[1])


def compare_runs(folders: list[str | os.PathLike[str]], force: bool = False) -> Comparison:
    """The per-task metrics of several run folders side by side.

    Args:
        folders: run folders (see the module docstring), one column each; at least two.
        force: compare runs whose data or scorers differ (the differences are listed).

    Raises:
        ComparisonError: fewer than two folders, a folder without reports, or (unless
            ``force``) a task whose runs differ in data or scorers.
    """
    if len(folders) < 2:
        raise ComparisonError(f"compare needs at least two run folders, got {len(folders)}")
    loaded = [load_reports(f) for f in folders]
    tasks = list(dict.fromkeys(t for reports in loaded for t in reports))
    differences = []
    for task in tasks:
        having = [(str(folders[i]), r[task][1]) for i, r in enumerate(loaded) if task in r]
        for path in _MUST_AGREE:
            values = {json.dumps(_field(rep, path), sort_keys=True) for _, rep in having}
            if len(values) > 1:
                differences.append(f"{task}: {'.'.join(path)} differs: " + "; ".join(
                    f"{folder}: {json.dumps(_field(rep, path), sort_keys=True)}"
                    for folder, rep in having))
    if differences and not force:
        raise ComparisonError("runs not comparable (use --force to compare anyway):\n  "
                              + "\n  ".join(differences))
    rows = []
    for task in tasks:
        per_column = [metrics(r[task][1]["scores"]) if task in r else {} for r in loaded]
        for metric in dict.fromkeys(m for column in per_column for m in column):
            rows.append({"task": task, "metric": metric,
                         "values": [column.get(metric) for column in per_column]})
    columns = [{task: {"folder": str(folder), "model": rep["model"], "data": rep["data"],
                       "scoring": rep["scoring"], "options": rep["options"]}
                for task, (folder, rep) in reports.items()} for reports in loaded]
    return Comparison(_labels(loaded, folders), [str(f) for f in folders], rows, columns,
                      differences)


def _labels(loaded: list[dict[str, tuple[Path, dict[str, Any]]]],
            folders: list[str | os.PathLike[str]]) -> list[str]:
    labels = [next(iter(reports.values()))[1]["model"]["label"] for reports in loaded]
    if len(set(labels)) < len(labels):  # the same model twice: the folders tell them apart
        return [str(f) for f in folders]
    return labels


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown table (4 significant digits; ``-``: no value)."""
    lines = ["| task | metric | " + " | ".join(comparison.labels) + " |",
             "|---|---|" + "---:|" * len(comparison.labels)]
    for row in comparison.rows:
        lines.append(f"| {row['task']} | {row['metric']} | "
                     + " | ".join(_cell(v) for v in row["values"]) + " |")
    if comparison.differences:
        lines += ["", "Compared although they differ (--force):", ""]
        lines += [f"- {d}" for d in comparison.differences]
    return "\n".join(lines) + "\n"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg back end.

    Raises:
        DataError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise DataError("charts need matplotlib: pip install 'lalm[eval]'") from e
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as a PNG atomically (`lalm.files.write_atomic`) and close it."""
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        pyplot().close(fig)


def bar_chart(comparison: Comparison, path: Path) -> None:
    """A PNG of grouped bars: one panel per task, one bar per run for each metric."""
    plt = pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in comparison.rows))
    n_runs = len(comparison.labels)
    widest = max(sum(r["task"] == t for r in comparison.rows) for t in tasks)
    fig, axes = plt.subplots(len(tasks), 1, squeeze=False,
                             figsize=(max(6.0, 0.35 * widest * n_runs + 2), 3.2 * len(tasks)))
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(n_runs)]
    width = 0.8 / n_runs
    for ax, task in zip(axes[:, 0], tasks):
        rows = [r for r in comparison.rows if r["task"] == task]
        for k, label in enumerate(comparison.labels):
            xs = [i + (k - (n_runs - 1) / 2) * width for i, r in enumerate(rows)
                  if r["values"][k] is not None]
            ys = [r["values"][k] for r in rows if r["values"][k] is not None]
            bars = ax.bar(xs, ys, width, color=colors[k], label=label)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(range(len(rows)), [r["metric"] for r in rows], rotation=30, ha="right",
                      fontsize=8)
        ax.set_xlim(-0.5, widest - 0.5)  # one bar width across the panels
        ax.set_title(task)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike[str]
                     ) -> tuple[Path, Path, Path]:
    """Write ``compare.md``, ``compare.json`` (strict JSON) and ``compare.png``.

    Returns:
        The three paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "compare.md", out / "compare.json", out / "compare.png"
    atomic_write(md, markdown(comparison).encode("utf-8"))
    write_strict_json(js, {"labels": comparison.labels, "folders": comparison.folders,
                           "rows": comparison.rows, "columns": comparison.columns,
                           "differences": comparison.differences})
    bar_chart(comparison, png)
    return md, js, png
