"""Manifest formats: readers, writers, round trips, lenient reading, refusals, the convert CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lalm import cli
from lalm.data.formats import (
    BadRecord,
    convert,
    guess_format,
    iter_format,
    read_examples,
    write_examples,
)
from lalm.data.manifest import AudioRef, Example, Message, TaskSpec, write_manifest
from lalm.errors import DataError


def _tone(path: Path, seconds: float, freq: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate,
             subtype="PCM_16")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, list[Example]]:
    """A lalm manifest in tmp_path/data with real WAVs: single clip, two-clip chat, text only."""
    root = tmp_path / "data"
    (root / "wav").mkdir(parents=True)
    _tone(root / "wav" / "a.wav", 1.0, 440)
    _tone(root / "wav" / "b.wav", 0.5, 660, rate=22050)
    examples = [
        Example("one", (AudioRef("wav/a.wav"),),
                TaskSpec("asr", "en", "en", instruction="Transcribe the speech."), "hello there"),
        Example("two", (AudioRef("wav/a.wav"), AudioRef("wav/b.wav")),
                TaskSpec("chat", instruction="Which is higher?"), "The second.",
                messages=(Message("user", "Which is higher?", (0, 1)),
                          Message("assistant", "The second."))),
        Example("text", (), TaskSpec("chat", instruction="Say hi."), "Hi.",
                messages=(Message("system", "Be brief."), Message("user", "Say hi."),
                          Message("assistant", "Hi."))),
    ]
    manifest = root / "train.jsonl"
    write_manifest(manifest, examples)
    return manifest, examples


def test_messages_round_trip_is_exact_and_keeps_turns(corpus, tmp_path):
    manifest, examples = corpus
    out = manifest.parent / "swift.jsonl"
    assert convert(manifest, None, out, "messages") == 3
    first = json.loads(out.read_text().splitlines()[0])
    assert first == {"id": "one", "audios": ["wav/a.wav"], "messages": [
        {"role": "user", "content": "<audio>Transcribe the speech."},
        {"role": "assistant", "content": "hello there"}]}
    back = manifest.parent / "back.jsonl"
    convert(out, "messages", back, "lalm")
    again = manifest.parent / "again.jsonl"
    convert(back, None, again, "messages")
    assert again.read_bytes() == out.read_bytes()  # messages -> lalm -> messages is exact
    restored = read_examples(back)
    for old, new in zip(examples, restored):
        assert (new.id, new.target, new.task.instruction) == (old.id, old.target,
                                                              old.task.instruction)
        assert [a.path for a in new.audios] == [str((manifest.parent / a.path).resolve())
                                                for a in old.audios]
    assert restored[0].task.name == "instruct" and not restored[0].messages
    assert restored[1].messages == examples[1].messages
    assert restored[2].messages == examples[2].messages


def test_messages_json_array_for_llama_factory(corpus):
    manifest, _ = corpus
    out = manifest.parent / "mllm_audio.json"
    convert(manifest, "lalm", out, "messages")
    records = json.loads(out.read_text())
    assert isinstance(records, list) and records[1]["audios"] == ["wav/a.wav", "wav/b.wav"]
    assert records[1]["messages"][0]["content"].count("<audio>") == 2
    assert [e.id for e in read_examples(out, "messages")] == ["one", "two", "text"]


def test_messages_bad_records_are_listed_with_reasons(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": "<audio><audio>hi"},
                      {"role": "assistant", "content": "x"}], "audios": ["a.wav"]},
        {"messages": [{"role": "user", "content": "hi"}], "audios": []},
        {"messages": [{"role": "robot", "content": "hi"},
                      {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "y"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n{not json\n")
    items = list(iter_format(path, "messages"))
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert [b.location for b in bad] == [f"{path}:{n}" for n in (1, 2, 3, 5)]
    assert "2 <audio> tags but 1 audios" in bad[0].reason
    assert "assistant" in bad[1].reason
    assert "robot" in bad[2].reason
    assert "not JSON" in bad[3].reason
    good = [i for i in items if isinstance(i, Example)]
    assert [(g.id, g.target) for g in good] == [("bad-000004", "y")]
    with pytest.raises(DataError, match=rf"{path}:1: "):
        read_examples(path, "messages")


def test_plain_round_trip_and_refusals(corpus, tmp_path):
    manifest, _ = corpus
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"audio": str(manifest.parent / "wav/a.wav"), "prompt": "Hi?",
                                 "target": "yes"}) + "\n")
    lalm = tmp_path / "plain.lalm.jsonl"
    convert(plain, None, lalm, "lalm")
    back = tmp_path / "plain_back.jsonl"
    convert(lalm, None, back, "plain")
    assert json.loads(back.read_text()) == {"id": "plain-000001", "audio": "data/wav/a.wav",
                                            "prompt": "Hi?", "target": "yes"}
    assert read_examples(back)[0].audios == read_examples(plain)[0].audios
    with pytest.raises(DataError, match="'two'.*exactly one audio"):
        convert(manifest, None, tmp_path / "x.jsonl", "plain")
    windowed = Example("w", (AudioRef(str(manifest.parent / "wav/a.wav"), 0.25, 0.5),),
                       TaskSpec("asr"), "x")
    with pytest.raises(DataError, match="'w'.*window"):
        write_examples(tmp_path / "w.jsonl", [windowed], "messages")


def test_hf_dataset_round_trip_embeds_audio(corpus, tmp_path):
    datasets = pytest.importorskip("datasets")
    manifest, examples = corpus
    single = tmp_path / "single.jsonl"
    write_manifest(single, [Example(e.id, tuple(AudioRef(str(manifest.parent / a.path))
                                                for a in e.audios), e.task, e.target)
                            for e in examples[:1]])
    for name in ("ds", "ds.parquet"):
        out = tmp_path / name
        assert convert(single, None, out, "hf") == 1
        assert guess_format(out) == "hf"
        ds = datasets.load_from_disk(str(out)) if out.is_dir() else \
            datasets.Dataset.from_parquet(str(out))
        assert isinstance(ds.features["audio"], datasets.Audio)
        assert ds.column_names == ["id", "audio", "prompt", "target"]
        back = tmp_path / f"{name}.lalm.jsonl"
        convert(out, None, back, "lalm", audio_dir=tmp_path / f"{name}_audio")
        (restored,) = read_examples(back)
        assert (restored.id, restored.target, restored.task.instruction) == (
            "one", "hello there", "Transcribe the speech.")
        extracted = Path(restored.audios[0].path)
        assert extracted.parent == (tmp_path / f"{name}_audio").resolve()
        assert extracted.read_bytes() == (manifest.parent / "wav/a.wav").read_bytes()


def test_lhotse_cutset_round_trip_keeps_windows(tmp_path):
    pytest.importorskip("lhotse")
    wav = _tone(tmp_path / "long.wav", 2.0, 300)
    examples = [
        Example("cut-a", (AudioRef("long.wav", 0.5, 1.0),),
                TaskSpec("asr", "de", "de", instruction="Transcribe."), "hallo welt"),
        Example("cut-b", (AudioRef("long.wav"),), TaskSpec("asr"), "whole file"),
    ]
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, examples)
    cuts = tmp_path / "cuts.jsonl.gz"
    convert(manifest, None, cuts, "lhotse")
    assert guess_format(cuts) == "lhotse"
    back = tmp_path / "back.jsonl"
    convert(cuts, None, back, "lalm")
    assert back.read_bytes() == manifest.read_bytes()
    assert read_examples(back)[0].audios[0] == AudioRef(str(wav.resolve()), 0.5, 1.0)


def test_guess_format_and_unknown(corpus, tmp_path):
    manifest, _ = corpus
    assert guess_format(manifest) == "lalm"
    convert(manifest, None, tmp_path / "m.jsonl", "messages")
    assert guess_format(tmp_path / "m.jsonl") == "messages"
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"x": 1}\n')
    with pytest.raises(DataError, match="cannot tell the format"):
        guess_format(odd)
    with pytest.raises(DataError, match="unknown manifest format 'csv'"):
        read_examples(manifest, "csv")
    with pytest.raises(DataError, match="does not exist"):
        read_examples(tmp_path / "missing.jsonl", "lalm")


def test_cli_convert(corpus, tmp_path, capsys):
    manifest, _ = corpus
    out = tmp_path / "cli.jsonl"
    assert cli.main(["data", "convert", str(manifest), str(out), "--to", "messages"]) == 0
    assert "wrote 3 examples" in capsys.readouterr().out
    assert cli.main(["data", "convert", str(manifest), str(out), "--to", "plain"]) == 2
    assert "exactly one audio" in capsys.readouterr().err
