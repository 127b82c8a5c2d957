"""The pieces of a self-describing evaluation report: strict JSON, the weights and data hashes,
and the checks of `lalm eval compare` on hand-written reports."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lalm.errors import ComparisonError
from lalm.eval.compare import compare_runs, markdown, metrics
from lalm.eval.report import REPORT_VERSION, data_sha256, dumps_strict, weights_sha256
from lalm.eval.tasks import get_task
from lalm.testing.models import random_model


def _strict(text: str | bytes) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(constant)
    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_with_their_reason() -> None:
    value = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2, "e": -math.inf}}
    written = _strict(dumps_strict(value))
    assert written["a"] is None and written["b"] == [1.0, None] and written["c"]["e"] is None
    assert set(written["null_scores"]) == {"a", "b[1]", "c.e"}
    assert "NaN" in written["null_scores"]["a"]
    assert value["a"] != value["a"]  # the caller's dict is left as it was


def test_weights_hash_follows_values_and_dtype() -> None:
    a, b = random_model(seed=0), random_model(seed=0)
    assert weights_sha256(a) == weights_sha256(b)
    assert weights_sha256(random_model(seed=1)) != weights_sha256(a)
    assert weights_sha256(b.to(torch.bfloat16)) != weights_sha256(a)
    with torch.no_grad():
        next(a.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(a) != weights_sha256(random_model(seed=0))


def _librispeech(root: Path, reference: str = "a b") -> Path:
    root.mkdir(parents=True)
    sf.write(root / "a.wav", np.zeros(1600, np.float32), 16000)
    row = {"audio": "a.wav", "gt": reference, "source": "librispeech_test_clean"}
    (root / "librispeech_eval.jsonl").write_text(json.dumps(row) + "\n")
    return root / "librispeech_eval.jsonl"


def test_data_hash_is_content_not_location(tmp_path: Path) -> None:
    task = get_task("librispeech")
    first = _librispeech(tmp_path / "one")
    digest = data_sha256(task.read(first).items, first)
    moved = tmp_path / "moved" / first.name
    shutil.copytree(first.parent, moved.parent)
    assert data_sha256(task.read(moved).items, moved) == digest
    sf.write(moved.parent / "a.wav", np.full(1600, 0.1, np.float32), 16000)  # other bytes
    assert data_sha256(task.read(moved).items, moved) != digest
    other = _librispeech(tmp_path / "other", reference="a c")
    assert data_sha256(task.read(other).items, other) != digest


def test_metrics_are_the_numbers_but_the_counts() -> None:
    scores = {"version": "v", "error_rate": {"x": 0.5, "y": None}, "count": {"x": 3},
              "scored": 3, "ok": True, "tasks": {"asr": {"value": 0.1, "count": 2}}}
    assert metrics(scores) == {"error_rate.x": 0.5, "tasks.asr.value": 0.1}


def _report(folder: Path, weights: str, wer: float, **changes: dict) -> Path:
    report = {"report_version": REPORT_VERSION, "task": "librispeech",
              "model": {"name": f"/m/{weights}", "label": f"{weights}-0000",
                        "weights_sha256": weights * 8},
              "data": {"sha256": "d" * 64, "evaluated": 4},
              "scoring": {"mode": "official", "procedures": ["qwen2-audio-asr-v1"],
                          "packages": {"sacrebleu": "2.4.0"}},
              "options": {"max_new_tokens": 4},
              "scores": {"error_rate": {"clean": wer}, "count": {"clean": 4}}}
    for part, fields in changes.items():
        report[part] = {**report[part], **fields}
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(report))
    return folder


def test_compare_refuses_other_scorers_unless_forced(tmp_path: Path) -> None:
    a = _report(tmp_path / "a" / "librispeech", "a", 0.25).parent  # a model's folder
    b = _report(tmp_path / "b", "b", 0.5, scoring={"packages": {"sacrebleu": "2.5.0"}})
    with pytest.raises(ComparisonError, match=r"librispeech: scoring\.packages differs"):
        compare_runs([a, b])
    forced = compare_runs([a, b], force=True)
    assert forced.rows == [{"task": "librispeech", "metric": "error_rate.clean",
                            "values": [0.25, 0.5]}]
    assert forced.labels == ["a-0000", "b-0000"]
    assert "Compared although they differ" in markdown(forced)


def test_compare_names_folders_it_cannot_read(tmp_path: Path) -> None:
    a = _report(tmp_path / "a", "a", 0.25)
    with pytest.raises(ComparisonError, match="at least two"):
        compare_runs([a])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ComparisonError, match="no summary.json"):
        compare_runs([a, tmp_path / "empty"])
    old = tmp_path / "old"
    old.mkdir()
    (old / "summary.json").write_text(json.dumps({"task": "librispeech", "scores": {}}))
    with pytest.raises(ComparisonError, match="older lalm"):
        compare_runs([a, old])
