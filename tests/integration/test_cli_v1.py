"""`lalm chat` and `lalm transcribe` on the Qwen-Audio (v1) fixture checkpoint: the prompt
family comes from the checkpoint. The weights are random, so these check structure (turns,
windows, formats), not text."""

from __future__ import annotations

import io
import json

import pytest

from lalm import cli
from lalm.api import load_model
from lalm.generation import Conversation, GenerationOptions
from lalm.prompt import QWEN_AUDIO, TimedWord
from lalm.subtitles import Cue, format_srt, format_vtt, group_cues

pytestmark = pytest.mark.integration


def test_two_audios_two_turns_through_the_api(v1_fixture) -> None:
    pipe = load_model(v1_fixture)
    assert pipe.family is QWEN_AUDIO
    options = GenerationOptions(max_new_tokens=4)
    conv = Conversation(pipe)
    first = conv.ask("What is in the two clips?",
                     [str(v1_fixture / "a.wav"), str(v1_fixture / "b.wav")], options)
    second = conv.ask("Which one is longer?", options=options)
    assert len(first.tokens) <= 4 and len(second.tokens) <= 4
    assert second.tokens == pipe.chat(conv.messages[:-1], options=options).tokens
    assert [r.shape[0] - 2 for r in conv.audio_rows] == [42, 105]  # 1.7 s, 4.2 s: 25 per second


def test_chat_two_audios_and_a_follow_up_turn(v1_fixture, monkeypatch, capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Which one is longer?\n\n"))
    argv = ["chat", "--model", str(v1_fixture), "--audio", str(v1_fixture / "a.wav"),
            "--audio", str(v1_fixture / "b.wav"), "--max-new-tokens", "4", "--interactive",
            "--json", "What is in the two clips?"]
    assert cli.main(argv) == 0
    turns = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(turns) == 2 and all(1 <= len(t["tokens"]) <= 4 for t in turns)


def test_transcribe_long_audio_with_timestamps_json_srt_vtt(v1_fixture, tmp_path,
                                                           capsys) -> None:
    files = [str(v1_fixture / "a.wav"), str(v1_fixture / "c.wav")]  # c.wav: 31.5 s
    common = ["transcribe", "--model", str(v1_fixture), *files, "--max-new-tokens", "6",
              "--timestamps", "--long-form", "fixed"]
    assert cli.main([*common, "--format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == files
    assert len(lines[0]["tokens"]) <= 6 < len(lines[1]["tokens"]) <= 12  # c.wav: 2 windows
    assert cli.main([*common, "--format", "srt", "--output-dir", str(tmp_path)]) == 0
    assert cli.main([*common, "--format", "vtt", "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    for line in lines:
        name = line["file"].rsplit("/", 1)[1].removesuffix(".wav")
        assert len(line["segments"]) == (2 if name == "c" else 1)
        if line["words"]:
            cues = group_cues([TimedWord(w["word"], w["start"], w["end"])
                               for w in line["words"]])
        else:  # random weights rarely write SRWT times: one cue per segment (as the server)
            cues = [Cue(s["start"], s["end"], s["text"]) for s in line["segments"] if s["text"]]
        assert cues  # the SRT was silently empty when the SRWT output had no times
        assert (tmp_path / f"{name}.srt").read_text() == format_srt(cues)
        assert (tmp_path / f"{name}.vtt").read_text() == format_vtt(cues)
    assert not list(tmp_path.glob("*.partial"))
    # without --timestamps: one cue per segment, as the server's srt. c.wav's windows ask for
    # SRWT either way (greedy: the same outputs); a.wav is one plain ASR prompt
    plain = [arg for arg in common if arg != "--timestamps"]
    assert cli.main([*plain, "--format", "srt", "--output-dir", str(tmp_path / "plain")]) == 0
    cues = [Cue(s["start"], s["end"], s["text"]) for s in lines[1]["segments"] if s["text"]]
    assert (tmp_path / "plain" / "c.srt").read_text() == format_srt(cues)
    assert (tmp_path / "plain" / "a.srt").read_text().startswith(
        "1\n00:00:00,000 --> 00:00:01,700\n")


def test_subtitles_of_several_files_need_an_output_dir(v1_fixture, capsys) -> None:
    wav = str(v1_fixture / "a.wav")
    assert cli.main(["transcribe", "--model", str(v1_fixture), wav, wav, "--timestamps",
                     "--format", "vtt"]) == 2
    assert "--output-dir" in capsys.readouterr().err
