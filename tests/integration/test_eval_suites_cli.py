"""`lalm eval` on the new suites end to end: a tiny random Qwen2-Audio checkpoint answers MMAU
items and VoiceBench spoken instructions; the VoiceBench judge is a stdlib HTTP server on
127.0.0.1 with fixed replies (it stands in for a judge model). The summary records both MMAU
numbers and the judge (model id, prompt hash, temperature, samples, seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import loopback_server

from lalm import cli
from lalm.eval.judge import text_sha256
from lalm.eval.voicebench import OPEN_PROMPT
from tests.unit.test_eval_judged import _Judge, _voicebench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from conftest import shared_fixture

    from lalm.testing.server import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny"),
                                shared_fixture("qwen2_audio_tokenizer"))


def test_mmau_summary_has_official_and_strict(checkpoint: Path, tmp_path: Path) -> None:
    rows = []
    for i in range(2):
        sf.write(tmp_path / f"{i}.wav", np.zeros(8000, dtype=np.float32), 16000)
        rows.append({"id": f"q{i}", "audio_id": f"./{i}.wav", "question": "What is heard?",
                     "choices": ["dog", "cat"], "answer": "dog", "task": "sound",
                     "difficulty": "easy", "sub-category": "animals"})
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    assert cli.main(["eval", "--model", str(checkpoint), "--task", "mmau", "--data",
                     str(tmp_path), "--out", str(out), "--max-new-tokens", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    scores = summary["scores"]
    assert scores["version"] == "mmau-string-match-v2" and summary["data"]["evaluated"] == 2
    assert set(scores["procedures"]) == {"mmau-string-match-v2", "mmau-substring-v1",
                                         "lalm-mc-strict-v1"}
    assert set(scores["procedures"]["lalm-mc-strict-v1"]["by"]) == {"task", "difficulty",
                                                                     "sub-category"}


def test_voicebench_open_needs_a_judge_and_records_it(checkpoint, tmp_path, monkeypatch,
                                                      capsys) -> None:
    data = _voicebench(tmp_path, [{"prompt": "Tell me a joke"}], monkeypatch)
    argv = ["eval", "--task", "voicebench-open", "--data", str(data), "--out",
            str(tmp_path / "out"), "--max-new-tokens", "3"]
    # refused before any model is loaded (the model path does not exist)
    assert cli.main([*argv, "--model", str(tmp_path / "missing")]) == 2
    assert "--judge-url" in capsys.readouterr().err
    _Judge.bodies = []
    with loopback_server(_Judge) as url:
        assert cli.main([*argv, "--model", str(checkpoint), "--judge-url", url,
                         "--judge-seed", "3"]) == 0
    judge = json.loads((tmp_path / "out" / "summary.json").read_text())["scores"]["judge"]
    assert (judge["model"], judge["samples"], judge["temperature"], judge["seed"]) == (
        "gpt-4o-mini", 3, 0.5, 3)
    assert judge["prompt_sha256"] == text_sha256(OPEN_PROMPT)
    assert (tmp_path / "out" / "judgements.jsonl").exists() and len(_Judge.bodies) == 1
