"""The evaluation runner end to end: tiny random models (both families) over a tiny lalm-synth set
and its AIR-Bench export, both scoring modes, the benchmark report, resume after interruption,
and `lalm eval` / `lalm bench-synth` in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("piper")

from lalm import cli  # noqa: E402
from lalm.config import ModelConfig  # noqa: E402
from lalm.data import read_manifest  # noqa: E402
from lalm.errors import DataError  # noqa: E402
from lalm.eval.evaluate import PREDICTIONS, evaluate, rescore  # noqa: E402
from lalm.eval.synth_report import run_synth_bench  # noqa: E402
from lalm.generation import Pipeline  # noqa: E402
from lalm.prompt import QWEN_AUDIO  # noqa: E402
from lalm.synth import generate  # noqa: E402
from lalm.testing.models import random_model  # noqa: E402
from lalm.tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.integration
TASKS = ["asr", "srwt", "language_id", "sound_event", "music_pitch", "mixed_caption",
         "mixed_choice", "chat", "text_chat"]
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, "tiny", seed=5, tasks=TASKS, workers=1)
    return out


@pytest.fixture(scope="module")
def v2_pipe() -> Pipeline:
    from conftest import shared_fixture

    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    return Pipeline(random_model(config, seed=3),
                    load_tokenizer(shared_fixture("qwen2_audio_tokenizer")))


def test_bench_scores_every_task_and_airbench_in_both_modes(synth, v2_pipe, tmp_path) -> None:
    report = run_synth_bench(v2_pipe, synth, tmp_path, progress=False,
                             max_new_tokens=NEW_TOKENS, model="tiny")
    rows = {r["task"]: r for r in report.rows}
    assert set(TASKS) <= set(rows)
    assert {"airbench (official)", "airbench (strict)"} <= set(rows)
    assert rows["asr"]["metric"] == "error rate" and rows["mixed_caption"]["metric"] == "CIDEr-D"
    assert all(0 <= r["score"] <= 100 for r in report.rows)
    exported = json.loads((synth / "airbench" / "Foundation_meta.json").read_text())
    summaries = json.loads(report.json.read_text())["summaries"]
    official, strict = summaries["airbench-official"], summaries["airbench-strict"]
    assert official["failed"] == strict["failed"]
    assert strict["scored"] == len(exported)  # strict: every item counts
    assert official["scored"] == len(exported) - official["failed"]
    assert report.chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| srwt | speech | WER |" in report.markdown.read_text()
    records = [json.loads(x) for x in (tmp_path / "lalm-synth" / PREDICTIONS).open()]
    assert [r["id"] for r in records] == [e.id for e in read_manifest(synth / "test.jsonl")]
    assert all(r["finish_reason"] in ("stop", "length") for r in records)


def test_v1_family_runs_the_tag_prompts(synth, qwen_tiktoken, tmp_path) -> None:
    config = ModelConfig.from_name("tiny-random-v1", decoder={"vocab_size": 155947})
    pipe = Pipeline(random_model(config, seed=4), load_tokenizer(qwen_tiktoken))
    summary = evaluate(pipe, "lalm-synth", synth, tmp_path, "strict", batch_size=3,
                       progress=False, max_new_tokens=NEW_TOKENS)
    tasks = summary["scores"]["tasks"]
    assert tasks["asr"]["version"] == "qwen-audio-asr-v1"
    assert tasks["sound_event"]["version"] == "exact-match-v1"  # strict
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["model"]["family"] == "qwen-audio"
    assert run["options"]["stop_token_ids"] == [151643]
    official = rescore("lalm-synth", tmp_path, QWEN_AUDIO, "official")
    assert official["tasks"]["sound_event"]["version"] == "normalized-match-v1"


class _Interrupted(Exception):
    pass


class _Flaky:
    """A pipeline that stops (as a kill would) after `batches` generate calls."""

    def __init__(self, pipe: Pipeline, batches: int) -> None:
        self.pipe, self.left, self.calls = pipe, batches, 0
        self.family, self.tokenizer, self.model = pipe.family, pipe.tokenizer, pipe.model
        self.stop_ids = pipe.stop_ids

    def generate(self, requests, options=None, batch_size=None, progress=None):
        if self.left == 0:
            raise _Interrupted
        self.left -= 1
        self.calls += 1
        return self.pipe.generate(requests, options, batch_size, progress)


def test_resume_after_interruption_equals_an_uninterrupted_run(synth, v2_pipe, tmp_path) -> None:
    args = {"scoring": "official", "batch_size": 2, "progress": False,
            "max_new_tokens": NEW_TOKENS}
    whole = evaluate(v2_pipe, "lalm-synth", synth, tmp_path / "whole", **args)
    flaky = _Flaky(v2_pipe, batches=2)
    with pytest.raises(_Interrupted):
        evaluate(flaky, "lalm-synth", synth, tmp_path / "cut", **args)
    predictions = tmp_path / "cut" / PREDICTIONS
    assert len(predictions.read_text().splitlines()) == 4
    with open(predictions, "a") as f:  # a record half-written when the process died
        f.write('{"id": "asr-test-00000", "resp')
    resumed = _Flaky(v2_pipe, batches=100)
    again = evaluate(resumed, "lalm-synth", synth, tmp_path / "cut", **args)
    n = len(read_manifest(synth / "test.jsonl"))
    assert resumed.calls == -(-(n - 4) // 2)  # only the missing items ran
    assert predictions.read_bytes() == (tmp_path / "whole" / PREDICTIONS).read_bytes()
    assert again["scores"] == whole["scores"]
    with pytest.raises(DataError, match="another run"):
        evaluate(v2_pipe, "lalm-synth", synth, tmp_path / "cut",
                 **{**args, "max_new_tokens": NEW_TOKENS + 1})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("transformers")
    from conftest import shared_fixture

    from lalm.testing.checkpoints import save_reference_checkpoint

    directory = tmp_path_factory.mktemp("qwen2_audio_tiny")
    save_reference_checkpoint(directory, shared_fixture("qwen2_audio_tokenizer"), seed=1)
    return directory


def test_cli_eval_and_bench(synth, checkpoint, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(checkpoint), "--task", "airbench-foundation", "--data",
            str(synth / "airbench"), "--out", str(out), "--max-new-tokens", "3", "--limit", "3"]
    assert cli.main([*argv, "--scoring", "strict"]) == 0
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert scores["version"] == "airbench-foundation-strict-v1" and scores["scored"] == 3
    assert cli.main([*argv, "--scoring", "official"]) == 0  # resumes: nothing to generate
    assert json.loads((out / "summary.json").read_text())["scores"]["version"] \
        == "airbench-foundation-official-v1"
    assert cli.main(["eval", "--model", str(checkpoint), "--task", "nope", "--data",
                     str(synth)]) == 2
    assert "unknown evaluation task 'nope'" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # the default folder is the model's own
    assert cli.main(["bench-synth", "--model", str(checkpoint), "--data", str(synth),
                     "--max-new-tokens", "3", "--limit", "2"]) == 0
    printed = capsys.readouterr().out
    (bench,) = (tmp_path / "runs" / "bench-synth").iterdir()
    assert bench.name.startswith(checkpoint.name + "-")
    assert "| task | category | metric |" in printed and (bench / "bench.png").exists()
