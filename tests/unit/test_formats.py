"""Manifest formats: readers, writers, round trips, lenient reading, refusals, the convert CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lalm import cli
from lalm.data.check import check_manifest
from lalm.data.formats import (
    BadRecord,
    convert,
    guess_format,
    iter_format,
    read_examples,
    write_examples,
)
from lalm.data.manifest import AudioRef, Example, ExampleTask, ExampleTurn, write_manifest
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
                ExampleTask("asr", "en", "en", instruction="Transcribe the speech."),
                "hello there"),
        Example("two", (AudioRef("wav/a.wav"), AudioRef("wav/b.wav")),
                ExampleTask("chat", instruction="Which is higher?"), "The second.",
                messages=(ExampleTurn("user", "Which is higher?", (0, 1)),
                          ExampleTurn("assistant", "The second."))),
        Example("text", (), ExampleTask("chat", instruction="Say hi."), "Hi.",
                messages=(ExampleTurn("system", "Be brief."), ExampleTurn("user", "Say hi."),
                          ExampleTurn("assistant", "Hi."))),
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
                       ExampleTask("asr"), "x")
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
                ExampleTask("asr", "de", "de", instruction="Transcribe."), "hallo welt"),
        Example("cut-b", (AudioRef("long.wav"),), ExampleTask("asr"), "whole file"),
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


def _rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_audio_keeps_its_place_in_the_text(corpus):
    """"Listen to this: <audio> and tell me" keeps text, audio, text in that order, through
    messages -> lalm -> messages and -> sharegpt (each audio at its own tag, in order)."""
    manifest, _ = corpus
    root = manifest.parent
    rows = [
        {"id": "mid", "audios": ["wav/a.wav"], "messages": [
            {"role": "user", "content": "Listen to this: <audio> and tell me what it is."},
            {"role": "assistant", "content": "A tone."}]},
        {"id": "two", "audios": ["wav/a.wav", "wav/b.wav"], "messages": [
            {"role": "user", "content": "First <audio>, then <audio>: which is higher?"},
            {"role": "assistant", "content": "The second."}]},
        {"id": "turns", "audios": ["wav/b.wav", "wav/a.wav"], "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "<audio>What is it?"},
            {"role": "assistant", "content": "A tone."},
            {"role": "user", "content": "And this one, <audio>?"},
            {"role": "assistant", "content": "Lower."}]},
    ]
    src = _rows(root / "swift.jsonl", rows)
    mid, two, turns = read_examples(src)
    assert mid.task.name == "chat"  # not an instruct item: that hears the audio first
    user = mid.messages[0]
    assert (user.text, user.audio_at) == ("Listen to this:  and tell me what it is.", (16,))
    assert user.pieces() == ["Listen to this: ", 0, " and tell me what it is."]
    assert two.messages[0].pieces() == ["First ", 0, ", then ", 1, ": which is higher?"]
    assert [m.pieces() for m in turns.messages] == [
        ["Be brief."], [0, "What is it?"], ["A tone."], ["And this one, ", 1, "?"], ["Lower."]]
    lalm_file, back = root / "lalm.jsonl", root / "back.jsonl"
    convert(src, None, lalm_file, "lalm")
    assert json.loads(lalm_file.read_text().splitlines()[0])["messages"][0]["audio_at"] == [16]
    convert(lalm_file, None, back, "messages")
    assert [json.loads(line) for line in back.read_text().splitlines()] == rows
    gpt = root / "sharegpt.json"
    convert(src, None, gpt, "sharegpt")
    records = json.loads(gpt.read_text())
    assert records[0]["conversations"][0] == {
        "from": "human", "value": "Listen to this: <audio> and tell me what it is."}
    assert records[2]["conversations"][0] == {"from": "system", "value": "Be brief."}
    assert read_examples(gpt) == read_examples(src)
    literal = Example("html", (), ExampleTask("chat"), "A tag.", messages=(
        ExampleTurn("user", "What is <audio> in HTML?"), ExampleTurn("assistant", "A tag.")))
    for fmt in ("messages", "sharegpt"):  # it would read back as an audio
        with pytest.raises(DataError, match="'html': a message text holds '<audio>'"):
            write_examples(root / "x.jsonl", [literal], fmt)


def test_tag_and_audio_counts_must_agree(tmp_path):
    """Tags that are not as many as the audios: a typed error naming the row, in every chat
    format, and a bad row in `lalm data check` (with the others still checked)."""
    _tone(tmp_path / "a.wav", 0.5, 440)
    ok = {"audios": ["a.wav"], "messages": [{"role": "user", "content": "Hear <audio>."},
                                            {"role": "assistant", "content": "Yes."}]}
    few = {"audios": ["a.wav", "a.wav"], "messages": [
        {"role": "user", "content": "Compare <audio> with the other."},
        {"role": "assistant", "content": "Same."}]}
    late_system = {"messages": [{"role": "user", "content": "Hi"},
                                {"role": "system", "content": "Be brief."},
                                {"role": "assistant", "content": "Yo"}]}
    spoken = {"audios": ["a.wav"], "messages": [{"role": "user", "content": "Say it."},
                                                {"role": "assistant", "content": "<audio>"}]}
    late, audio_reply = iter_format(_rows(tmp_path / "s.jsonl", [late_system, spoken]))
    assert isinstance(late, BadRecord) and "system message may only come first" in late.reason
    assert isinstance(audio_reply, BadRecord) and "assistant turn holds <audio>" in \
        audio_reply.reason
    path = _rows(tmp_path / "m.jsonl", [ok, few])
    with pytest.raises(DataError, match=rf"{path}:2: 1 <audio> tags but 2 audios"):
        read_examples(path)
    gpt = _rows(tmp_path / "g.jsonl", [
        {"audios": ["a.wav"], "conversations": [
            {"from": "human", "value": "<audio><audio> which?"}, {"from": "gpt", "value": "x"}]},
        {"audios": ["a.wav"], "conversations": [
            {"from": "human", "value": "<audio> what?"}, {"from": "gpt", "value": "A tone."}]}])
    for manifest, where in ((path, f"{path}:2"), (gpt, f"{gpt}:1")):
        report = check_manifest(manifest)
        assert (report.records, report.good) == (2, 1)
        assert [p.where for p in report.problems] == [where]
        assert "<audio> tags but" in report.problems[0].reason
    bad_at = {"id": "x", "task": {"name": "chat"}, "target": "y", "audios": [
        {"path": "a.wav"}], "messages": [{"role": "user", "text": "hi", "audios": [0],
                                          "audio_at": [9]}, {"role": "assistant", "text": "y"}]}
    (item,) = iter_format(_rows(tmp_path / "l.jsonl", [bad_at]), "lalm")
    assert isinstance(item, BadRecord) and "audio_at (9,)" in item.reason


def test_sharegpt_reads_llama_factory_rows(tmp_path):
    """LLaMA-Factory's ShareGPT layout (conversations/from/value, system, tools, audios):
    guessed and named, roles mapped, tool turns and other roles refused with the reason."""
    _tone(tmp_path / "a.wav", 0.5, 440)
    rows = [
        {"conversations": [{"from": "human", "value": "<audio>What is it?"},
                           {"from": "gpt", "value": "A tone."}], "audios": ["a.wav"]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                           {"from": "human", "value": "Hear <audio> now"},
                           {"from": "gpt", "value": "Heard."}],
         "system": "Be brief.", "tools": "", "audios": ["a.wav"]},
        {"conversations": [{"from": "system", "value": "Turn wins."},
                           {"from": "user", "value": "Hi"},
                           {"from": "assistant", "value": "Yo"}], "system": "Field loses."},
        {"conversations": [{"from": "human", "value": "Weather?"},
                           {"from": "function_call", "value": "{}"},
                           {"from": "observation", "value": "sun"},
                           {"from": "gpt", "value": "Sunny."}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
         "tools": "[{\"name\": \"f\"}]"},
    ]
    path = _rows(tmp_path / "gpt.jsonl", rows)
    assert guess_format(path) == "sharegpt"
    items = list(iter_format(path))
    assert items == list(iter_format(path, "sharegpt"))
    first, second, third, tool_turns, tools = items
    assert (first.task.name, first.task.instruction, first.target) == (
        "instruct", "What is it?", "A tone.")
    assert first.audios[0].path == str((tmp_path / "a.wav").resolve())
    assert [(m.role, m.pieces()) for m in second.messages] == [
        ("system", ["Be brief."]), ("user", ["Hi"]), ("assistant", ["Hello"]),
        ("user", ["Hear ", 0, " now"]), ("assistant", ["Heard."])]
    assert [(m.role, m.text) for m in third.messages] == [
        ("system", "Turn wins."), ("user", "Hi"), ("assistant", "Yo")]
    assert isinstance(tool_turns, BadRecord) and tool_turns.location == f"{path}:4"
    assert "'function_call' is not one of human, user, gpt, assistant, system" in \
        tool_turns.reason and "tool turns" in tool_turns.reason
    assert isinstance(tools, BadRecord) and "'tools' is not supported" in tools.reason


def test_wrong_explicit_format_names_the_row_and_key(tmp_path, capsys):
    """A ShareGPT file read as messages (or any row as another format): a typed error naming
    the row, the missing key and the format the row looks like, never a KeyError."""
    path = _rows(tmp_path / "gpt.jsonl", [{"conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}])
    with pytest.raises(DataError, match=rf"{path}:1: no 'messages' key, which a 'messages' row "
                                        r"needs; the row has \['conversations'\]; it looks "
                                        r"like a 'sharegpt' row"):
        read_examples(path, "messages")
    for fmt, key in (("plain", "audio"), ("lalm", "id"), ("sharegpt", "conversations")):
        other = path if fmt != "sharegpt" else _rows(tmp_path / "m.jsonl", [{"messages": []}])
        (item,) = iter_format(other, fmt)
        assert isinstance(item, BadRecord) and f"no {key!r} key" in item.reason
    broken = _rows(tmp_path / "broken.jsonl", [{"conversations": [{"from": "human"}]}])
    (item,) = iter_format(broken, "sharegpt")
    assert "turn 0 of 'conversations' must be an object with 'from' and 'value'" in item.reason
    out = tmp_path / "out.jsonl"
    assert cli.main(["data", "convert", str(path), str(out), "--from", "messages",
                     "--to", "lalm"]) == 2
    err = capsys.readouterr().err
    assert "no 'messages' key" in err and "KeyError" not in err
