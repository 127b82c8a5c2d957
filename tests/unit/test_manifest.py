"""lalm.data.manifest: the Example record, its JSONL form, atomic writes, clear errors."""

from __future__ import annotations

import json

import pytest

from lalm.data import AudioRef, Example, ExampleTurn, ExampleTask, TimedWord, read_manifest
from lalm.data import write_manifest
from lalm.errors import DataError


def _example(**over) -> Example:
    fields = dict(
        id="ex-1",
        audios=(AudioRef("a.wav"), AudioRef("long.flac", offset=1.5, duration=2.0)),
        task=ExampleTask("sound_event", None, "en", instruction="What sound?", question="What?",
                      choices=("siren", "doorbell")),
        target="siren", answer="siren",
        words=(TimedWord(None, 0.0, 0.4), TimedWord("héllo", 0.4, 0.9)),
        messages=(ExampleTurn("user", "Which?", (0, 1)), ExampleTurn("assistant", "siren")),
        split="test", metadata={"params": {"hz": 440.5}, "list": [1, 2]},
    )
    fields.update(over)
    return Example(**fields)


def test_jsonl_round_trip_is_exact(tmp_path):
    examples = [_example(), _example(id="ex-2", audios=(), messages=(), task=ExampleTask("asr"))]
    path = tmp_path / "m.jsonl"
    assert write_manifest(path, examples) == 2
    assert read_manifest(path) == examples
    # equal records are equal bytes (sorted keys), and no temporary file is left behind
    first = path.read_bytes()
    write_manifest(path, read_manifest(path))
    assert path.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]
    assert "héllo" in first.decode("utf-8")


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(_example().to_dict())
    path.write_text(good + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:3"):
        read_manifest(path)
    path.write_text(json.dumps({"id": "x", "task": {"name": "asr"}}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*'x' is malformed"):
        read_manifest(path)
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("over, message", [
    ({"split": "dev"}, "split 'dev'"),
    ({"answer": "chirp"}, "not a choice"),
    ({"id": ""}, "id is empty"),
    ({"messages": (ExampleTurn("user", "x", (5,)),)}, "missing audio"),
])
def test_inconsistent_example_is_rejected(over, message):
    with pytest.raises(DataError, match=message):
        _example(**over)


def test_field_validation():
    with pytest.raises(DataError, match="unknown language 'xx'"):
        ExampleTask("asr", "xx")
    with pytest.raises(DataError, match="repeated choices"):
        ExampleTask("x", choices=("a", "a"))
    with pytest.raises(DataError, match="bad span"):
        _example(words=(TimedWord("w", 1.0, 0.5),))
    with pytest.raises(DataError, match="bad window"):
        AudioRef("a.wav", offset=-1)
    with pytest.raises(DataError, match="role"):
        ExampleTurn("robot", "hi")
