"""`lalm data check`: every bad record and audio listed with its reason, never fatal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from lalm import cli
from lalm.data.check import check_manifest
from lalm.data.manifest import AudioRef, Example, ExampleTask, dumps_example


def _noise(path: Path, n_samples: int, rate: int = 16000) -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(n_samples)).astype(np.float32), rate,
             subtype="PCM_16")
    return path


def _example(id_: str, path: str, target: str = "text", **window: float) -> str:
    return dumps_example(Example(id_, (AudioRef(path, **window),), ExampleTask("asr"), target))


def test_check_lists_every_problem_with_its_reason(tmp_path, v1_fixture, capsys):
    shutil.copy(v1_fixture / "a.wav", tmp_path / "speech.wav")
    _noise(tmp_path / "good8k.wav", 8000, rate=8000)  # 1 s at 8 kHz
    _noise(tmp_path / "short.wav", 100)  # 100 samples: no mel frame
    _noise(tmp_path / "long.wav", 16000 * 31)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00not audio at all" * 10)
    truncated = _noise(tmp_path / "full.wav", 16000).read_bytes()[:2000]
    (tmp_path / "truncated.wav").write_bytes(truncated[:44] + truncated[44:1000])
    lines = [
        _example("ok-speech", "speech.wav"),
        _example("ok-8k", "good8k.wav"),
        _example("missing", "nowhere.wav"),
        _example("empty", "empty.wav"),
        _example("corrupt", "corrupt.wav"),
        _example("truncated", "truncated.wav"),
        _example("short", "short.wav"),
        _example("long", "long.wav"),
        _example("window", "good8k.wav", offset=0.5, duration=2.0),
        _example("blank", "speech.wav", target="  "),
        _example("ok-speech", "speech.wav"),
        '{"id": "x", "task": {"name": "asr"}}',
        "{broken",
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")

    report = check_manifest(manifest)
    assert (report.records, report.good, report.ok) == (13, 2, False)
    by_where = {p.where: p.reason for p in report.problems}
    assert by_where["missing"].endswith("nowhere.wav: no such file")
    assert by_where["empty"].endswith("empty.wav: empty file (0 bytes)")
    assert "corrupt.wav: not a decodable audio file" in by_where["corrupt"]
    assert "truncated.wav: truncated WAV" in by_where["truncated"]
    assert "shorter than one 10 ms mel frame" in by_where["short"]
    assert "longer than 30 s" in by_where["long"]
    assert "past the end" in by_where["window"]
    assert by_where["blank"] == "empty target"
    assert "repeats" in by_where["ok-speech"]
    assert "no 'target' key, which a 'lalm' row needs" in by_where[f"{manifest}:12"]
    assert "not JSON" in by_where[f"{manifest}:13"]
    assert report.sample_rates[8000] == 1 and report.sample_rates[16000] >= 1
    assert len(report.problems) == 11

    assert cli.main(["data", "check", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("13 records: 2 good, 11 with problems")
    assert "sample rates: 8000 Hz x1" in out
    assert "BAD corrupt:" in out and f"BAD {manifest}:13: not JSON" in out


def test_check_clean_manifest_passes_and_summarises(tmp_path, capsys):
    _noise(tmp_path / "a.wav", 24000)
    _noise(tmp_path / "b.wav", 8000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([_example("a", "a.wav"), _example("b", "b.wav"),
                                   _example("c", "a.wav", offset=0.5, duration=1.0)]) + "\n")
    report = check_manifest(manifest)
    assert report.ok and report.good == 3
    assert sorted(report.durations) == [0.5, 1.0, 1.5]
    assert report.sample_rates == {16000: 2}  # each file counted once
    assert cli.main(["data", "check", str(manifest)]) == 0
    assert "audio: 3 clips" in capsys.readouterr().out


def test_check_reads_other_formats(tmp_path):
    _noise(tmp_path / "a.wav", 16000)
    records = [{"messages": [{"role": "user", "content": "<audio>Hi"},
                             {"role": "assistant", "content": "Hello"}], "audios": ["a.wav"]},
               {"messages": [{"role": "user", "content": "<audio>Hi"},
                             {"role": "assistant", "content": "Hello"}], "audios": ["b.wav"]}]
    path = tmp_path / "swift.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = check_manifest(path)
    assert (report.records, report.good) == (2, 1)
    assert report.problems[0].where == "swift-000002" and "b.wav" in report.problems[0].reason
