"""Evaluation runs keyed by the model, self-describing reports, resume, batching and
`lalm eval compare`: two tiny Qwen2-Audio checkpoints (same shape, other weights; real
tokenizer files) over a LibriSpeech-format JSONL of real WAV files, through `lalm eval`."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lalm import cli
from lalm.config import ModelConfig
from lalm.errors import DataError
from lalm.eval.evaluate import PREDICTIONS, SUMMARY, evaluate
from lalm.eval.report import REPORT_VERSION, describe_model
from lalm.eval.tasks import EvalTask, get_task
from lalm.generation import GenerationOptions, Pipeline, Request
from lalm.prompt import AudioPart, Prompt, family_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NEW_TOKENS = 4


def _strict(text: str) -> dict:
    """JSON as jq / JavaScript read it: NaN and Infinity are errors."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Four clips (tones and noise, 16 kHz) and the official LibriSpeech JSONL over them."""
    root = tmp_path_factory.mktemp("librispeech")
    rng = np.random.default_rng(0)
    rows = []
    for n in range(4):
        t = np.arange(int(16000 * (0.5 + 0.25 * n))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * n) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / f"clip{n}.wav", wave.astype(np.float32), 16000)
        rows.append({"audio": f"clip{n}.wav", "gt": f"word {n} here",
                     "source": "librispeech_test_clean"})
    (root / "librispeech_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "librispeech_eval.jsonl"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Two checkpoint folders of the same shape and different weights (lalm's own writer)."""
    from conftest import shared_fixture

    from lalm.checkpoint import save_model
    from lalm.testing.checkpoints import TOKENIZER_FILES
    from lalm.testing.models import random_model

    tokenizer = shared_fixture("qwen2_audio_tokenizer")
    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    dirs = []
    for seed in (1, 2):
        directory = tmp_path_factory.mktemp(f"model{seed}")
        save_model(random_model(config, seed=seed), directory)
        for name in TOKENIZER_FILES:
            if (tokenizer / name).is_file():
                shutil.copy(tokenizer / name, directory / name)
        dirs.append(directory)
    return dirs[0], dirs[1]


@pytest.fixture(scope="module")
def pipes(models) -> tuple[Pipeline, Pipeline]:
    return Pipeline.from_pretrained(models[0]), Pipeline.from_pretrained(models[1])


def _eval(model: Path, data: Path, *extra: str) -> Path:
    """Run `lalm eval` on the LibriSpeech items; the folder it says it wrote."""
    argv = ["eval", "--model", str(model), "--task", "librispeech", "--data", str(data),
            "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "2", *extra]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(argv) == 0
    last = printed.getvalue().strip().splitlines()[-1]
    assert last.startswith("predictions and summary in ")
    return Path(last.removeprefix("predictions and summary in ")).resolve()


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / PREDICTIONS).open()]


def _responses(folder: Path) -> list[str]:
    return [r["response"] for r in _records(folder)]


@pytest.fixture(scope="module")
def default_runs(models, data, tmp_path_factory) -> dict[str, Path]:
    """`lalm eval` with default folders: B alone in one working directory; A then B in another."""
    a, b = models
    alone, both = tmp_path_factory.mktemp("alone"), tmp_path_factory.mktemp("both")
    cwd = os.getcwd()
    try:
        os.chdir(alone)
        runs = {"b_alone": _eval(b, data)}
        os.chdir(both)
        runs |= {"a": _eval(a, data), "b": _eval(b, data)}
    finally:
        os.chdir(cwd)
    return runs


def test_a_second_model_never_reuses_the_first_models_predictions(models, default_runs) -> None:
    a, b = models
    alone, first, second = default_runs["b_alone"], default_runs["a"], default_runs["b"]
    assert _responses(second) == _responses(alone)  # B's own, not A's
    assert _responses(first) != _responses(alone)  # the two models do answer differently
    assert first != second and second.parent.name.startswith(b.name + "-")


def test_an_explicit_folder_of_another_model_is_refused(pipes, data, tmp_path) -> None:
    a, b = pipes
    options = {"progress": False, "max_new_tokens": NEW_TOKENS, "limit": 2}
    evaluate(a, "librispeech", data, tmp_path, **options)
    with pytest.raises(DataError, match=r"another run \(its model \(weights_sha256"):
        evaluate(b, "librispeech", data, tmp_path, **options)
    moved = tmp_path / "moved"  # the same data elsewhere: same hash, the run resumes
    shutil.copytree(data.parent, moved)
    again = evaluate(a, "librispeech", moved / data.name, tmp_path,
                     **{**options, "limit": None})
    assert again["wall_time_s"]["generated"] == 2 and again["data"]["evaluated"] == 4


def test_summary_is_strict_json_with_the_reason_of_each_null(pipes, data, tmp_path) -> None:
    base = get_task("librispeech")

    def undefined(records, context) -> dict:  # as AIR-Bench reports a group with no answer
        return {"version": "test-v1", "accuracy": {"group": float("nan")}, "count": {"group": 0}}

    task = EvalTask("nan-task", "a scorer without a defined value", base.read, base.request,
                    undefined)
    summary = evaluate(pipes[0], task, data, tmp_path, progress=False, limit=1,
                       max_new_tokens=NEW_TOKENS)
    written = _strict((tmp_path / SUMMARY).read_text())
    assert written["scores"]["accuracy"]["group"] is None
    assert "NaN" in written["null_scores"]["scores.accuracy.group"]
    assert summary["scores"]["accuracy"]["group"] != 0  # the returned summary keeps the NaN


def test_report_describes_the_run_and_suffices_to_reproduce_it(
        models, pipes, data, tmp_path) -> None:
    folder = _eval(models[0], data, "--limit", "3", "--out", str(tmp_path / "run"))
    report = _strict((folder / SUMMARY).read_text())
    assert report["report_version"] == REPORT_VERSION and report["task"] == "librispeech"
    model = report["model"]
    assert model["path"] == str(models[0].resolve()) and model["family"] == "qwen2-audio"
    assert model["dtype"] == "float32" and len(model["weights_sha256"]) == 64
    assert model["weights_sha256"] == describe_model(pipes[0]).weights_sha256
    assert model["config"]["decoder"]["vocab_size"] == 156032
    assert report["data"]["path"] == str(data.resolve())
    assert (report["data"]["items"], report["data"]["evaluated"]) == (4, 3)
    assert len(report["data"]["sha256"]) == 64
    assert report["prompts"]["librispeech_test_clean"].endswith(
        "Detect the language and recognize the speech: <|en|>")
    assert report["options"]["max_new_tokens"] == NEW_TOKENS
    assert report["scoring"]["mode"] == "official"
    assert report["scoring"]["procedures"] == ["qwen2-audio-asr-v1"]
    packages = report["scoring"]["packages"]
    assert {"sacrebleu", "whisper-normalizer", "editdistance"} <= set(packages)
    assert report["environment"]["lalm"] and report["wall_time_s"]["total"] > 0
    # the report and the predictions alone rerun the same outputs
    pipe = Pipeline.from_pretrained(model["path"])
    options = GenerationOptions(**{k: tuple(v) if isinstance(v, list) else v
                                   for k, v in report["options"].items()})
    records = _records(folder)
    assert len(records) == 3
    requests = [Request(Prompt.from_text(r["prompt_text"], family_spec(model["family"]),
                                         [AudioPart(a) for a in r["audios"]])) for r in records]
    results = pipe.generate(requests, options)
    assert [pipe.tokenizer.decode(x.tokens, skip_special=False) for x in results] \
        == [r["raw_output"] for r in records]
    item = get_task("librispeech").read(data).items[0]
    assert records[0]["prompt_text"] == get_task("librispeech").request(
        item, pipe.family).prompt.text


def test_batched_equals_one_at_a_time_and_the_bar_shows_the_rate(
        pipes, data, tmp_path, capsys) -> None:
    options = {"max_new_tokens": NEW_TOKENS}
    single = evaluate(pipes[1], "librispeech", data, tmp_path / "one", batch_size=1,
                      progress=False, **options)
    batched = evaluate(pipes[1], "librispeech", data, tmp_path / "four", batch_size=4,
                       progress=True, **options)
    assert _records(tmp_path / "one") == _records(tmp_path / "four")
    assert single["scores"] == batched["scores"]
    bar = capsys.readouterr().err
    assert "4/4" in bar and "item/s" in bar and "<" in bar  # items/s and the time left


def test_resume_checks_the_prompt_of_every_kept_record(pipes, data, tmp_path) -> None:
    options = {"progress": False, "max_new_tokens": NEW_TOKENS, "limit": 2}
    evaluate(pipes[0], "librispeech", data, tmp_path, **options)
    path = tmp_path / PREDICTIONS
    records = _records(tmp_path)
    records[1]["prompt_text"] = "an older prompt"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(DataError, match="predicted from another prompt"):
        evaluate(pipes[0], "librispeech", data, tmp_path, **options)


def test_compare_two_models_side_by_side_and_refuse_other_data(
        models, data, default_runs, tmp_path, capsys) -> None:
    runs = [default_runs["a"].parent, default_runs["b"].parent]  # the models' folders
    out = tmp_path / "cmp"
    assert cli.main(["eval", "compare", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    labels = [r.name for r in runs]
    assert f"| task | metric | {labels[0]} | {labels[1]} |" in printed
    assert "| librispeech | error_rate.librispeech_test_clean |" in printed
    table = _strict((out / "compare.json").read_text())
    (row,) = table["rows"]
    expected = [_strict((r / "librispeech" / SUMMARY).read_text())["scores"]["error_rate"]
                ["librispeech_test_clean"] for r in runs]
    assert row["values"] == expected and table["labels"] == labels
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "compare.md").read_text().startswith("| task | metric |")
    other = tmp_path / "other"  # one reference changed: other data
    shutil.copytree(data.parent, other)
    lines = (other / data.name).read_text().splitlines()
    lines[0] = lines[0].replace("word 0 here", "another reference")
    (other / data.name).write_text("\n".join(lines) + "\n")
    elsewhere = _eval(models[1], other / data.name, "--out", str(tmp_path / "b-other"))
    assert cli.main(["eval", "compare", str(runs[0]), str(elsewhere)]) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and "librispeech: data.sha256 differs" in err
    assert cli.main(["eval", "compare", str(runs[0]), str(elsewhere), "--force", "--out",
                     str(tmp_path / "forced")]) == 0
    forced = _strict((tmp_path / "forced" / "compare.json").read_text())
    assert forced["differences"] and "--force" in capsys.readouterr().out
