"""`lalm chat` and `lalm transcribe` in-process on a checkpoint directory saved by transformers
(random tiny weights beside the real Qwen2-Audio tokenizer and processor files)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("transformers")

from lalm import cli
from lalm.testing.checkpoints import save_reference_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import shared_fixture

    directory = tmp_path_factory.mktemp("qwen2_audio_tiny")
    save_reference_checkpoint(directory, shared_fixture("qwen2_audio_tokenizer"), seed=1)
    return directory


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([1.0, 2.3, 0.7]):
        n = int(seconds * 16000)
        tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * np.arange(n) / 16000)
        path = folder / f"clip{i}.wav"
        sf.write(path, (tone + 0.02 * rng.standard_normal(n)).astype(np.float32), 16000)
        paths.append(str(path))
    return paths


def test_chat_streams_an_answer(checkpoint, wavs, capsys) -> None:
    argv = ["chat", "--model", str(checkpoint), "--audio", wavs[0], "--audio", wavs[1],
            "--max-new-tokens", "5", "What do you hear?"]
    assert cli.main(argv) == 0
    streamed = capsys.readouterr().out
    assert cli.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert streamed == result["raw"] + "\n"
    assert 1 <= len(result["tokens"]) <= 5


def test_transcribe_batches_with_progress_and_json(checkpoint, wavs, capsys) -> None:
    argv = ["transcribe", "--model", str(checkpoint), *wavs, "--max-new-tokens", "4",
            "--batch-size", "2", "--json"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["file"] for line in lines] == wavs
    assert "3/3" in captured.err  # the progress bar
    assert cli.main([*argv[:-1], "--batch-size", "1"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in plain] == wavs
    assert [line.split("\t", 1)[1] for line in plain] == [line["text"] for line in lines]


def test_bad_input_prints_the_error_and_exits_2(checkpoint, wavs, tmp_path, capsys) -> None:
    missing = str(tmp_path / "nope.wav")
    assert cli.main(["chat", "--model", str(checkpoint), "--audio", missing, "Hi"]) == 2
    assert "nope.wav" in capsys.readouterr().err
    assert cli.main(["chat", "--model", str(checkpoint), ""]) == 2
    assert "empty prompt" in capsys.readouterr().err
    assert cli.main(["transcribe", "--model", str(checkpoint), wavs[0],
                     "--max-new-tokens", "100000"]) == 2
    assert "max_seq_len" in capsys.readouterr().err
    assert cli.main(["chat", "--model", str(tmp_path), "Hi"]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """31.5 s of tones and noise: two windows of the 30-s encoder."""
    rng = np.random.default_rng(1)
    n = int(31.5 * 16000)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, (tone + 0.02 * rng.standard_normal(n)).astype(np.float32), 16000)
    return str(path)


@pytest.mark.slow  # 31.5 s of audio, four times
def test_srt_and_vtt_on_qwen2_audio_one_cue_per_segment(checkpoint, wavs, long_wav, tmp_path,
                                                        capsys) -> None:
    from lalm.api import load_model
    from lalm.subtitles import Cue, format_srt, format_vtt

    files = [wavs[0], long_wav]
    common = ["transcribe", "--model", str(checkpoint), *files, "--max-new-tokens", "4",
              "--long-form", "fixed", "--output-dir", str(tmp_path)]
    assert cli.main([*common, "--format", "srt"]) == 0  # was refused: "needs --timestamps"
    assert cli.main([*common, "--format", "vtt"]) == 0
    assert cli.main([*common, "--format", "json"]) == 0
    capsys.readouterr()
    transcripts = load_model(checkpoint).transcribe_segments(
        files, max_new_tokens=4, long_form="fixed")
    assert [len(t.segments) for t in transcripts] == [1, 2]
    for path, transcript in zip(files, transcripts):
        stem = path.rsplit("/", 1)[1].removesuffix(".wav")
        # the server's construction of its srt / vtt (lalm.serve.app): one cue per segment
        cues = [Cue(s.start, s.end, s.text.strip()) for s in transcript.segments
                if s.text.strip()]
        assert (tmp_path / f"{stem}.srt").read_text() == format_srt(cues)
        assert (tmp_path / f"{stem}.vtt").read_text() == format_vtt(cues)
        line = json.loads((tmp_path / f"{stem}.json").read_text())
        assert [(s["start"], s["end"]) for s in line["segments"]] == \
            [(round(s.start, 3), round(s.end, 3)) for s in transcript.segments]


def test_option_errors_come_before_the_model_loads(checkpoint, wavs, tmp_path, capsys) -> None:
    from lalm.api import transcribe
    from lalm.errors import AudioError, PromptError

    # config.json and tokenizer files, no weights: anything that loads the model fails
    for f in checkpoint.iterdir():
        if not f.name.endswith(".safetensors"):
            (tmp_path / f.name).write_bytes(f.read_bytes())
    assert cli.main(["transcribe", "--model", str(tmp_path), wavs[0], "--timestamps"]) == 2
    assert "word timestamps need a Qwen-Audio (v1) checkpoint" in capsys.readouterr().err
    assert cli.main(["transcribe", "--model", str(tmp_path), wavs[0], "--overlap", "40"]) == 2
    assert "overlap_s=40" in capsys.readouterr().err
    assert cli.main(["chat", "--model", str(tmp_path), "--temperature", "-1", "Hi"]) == 2
    assert "temperature" in capsys.readouterr().err
    with pytest.raises(PromptError, match="word timestamps"):
        transcribe(tmp_path, wavs[:1], timestamps=True)
    with pytest.raises(AudioError, match="long_form"):
        transcribe(tmp_path, wavs[:1], long_form="windows")  # type: ignore[arg-type]


def test_decoding_defaults_come_from_generation_config(checkpoint, wavs, tmp_path,
                                                      capsys) -> None:
    for f in checkpoint.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [151643, 151645], "min_new_tokens": 3,
                    "max_new_tokens": 3}))
    argv = ["chat", "--model", str(tmp_path), "--audio", wavs[0], "--format", "json", "Hi"]
    assert cli.main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"]) == 3  # was up to 256
    assert cli.main([*argv, "--max-new-tokens", "5"]) == 0  # a flag overrides the file
    assert 3 <= len(json.loads(capsys.readouterr().out)["tokens"]) <= 5


def test_help_shows_defaults_and_json_is_a_deprecated_alias(checkpoint, wavs, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["transcribe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "prompts (files or windows) per batch (default: 8)" in text
    assert "(default: the checkpoint's generation_config.json, else 256)" in text
    with pytest.raises(SystemExit):
        cli.main(["data", "check", "--help"])
    assert "(default: 30.0)" in " ".join(capsys.readouterr().out.split())
    argv = ["transcribe", "--model", str(checkpoint), wavs[0], "--max-new-tokens", "2"]
    assert cli.main([*argv, "--json"]) == 0
    old = capsys.readouterr()
    assert "--json is deprecated, use --format json" in old.err
    assert cli.main([*argv, "--format", "json"]) == 0
    assert capsys.readouterr().out == old.out
    assert cli.main([*argv, "--json", "--format", "srt"]) == 2
    assert "cannot go with --format srt" in capsys.readouterr().err


class _Terminal(io.StringIO):
    """Typed input: a real text stream that reports a terminal (no pty on every CI runner)."""

    def isatty(self) -> bool:
        return True


def test_interactive_chat_prompts_only_at_a_terminal(checkpoint, wavs, monkeypatch,
                                                     capsys) -> None:
    argv = ["chat", "--model", str(checkpoint), "--max-new-tokens", "2", "--interactive"]
    monkeypatch.setattr("sys.stdin", _Terminal("Hello\nAnd?\n\n"))
    assert cli.main(argv) == 0  # no question: the first one is read too
    captured = capsys.readouterr()
    assert captured.err.count("> ") == 3 and len(captured.out.splitlines()) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("And?\n"))
    assert cli.main([*argv, "--audio", wavs[0], "Hi"]) == 0
    captured = capsys.readouterr()
    assert "> " not in captured.err and len(captured.out.splitlines()) == 2


def test_limits_are_checked_from_the_header_before_decoding(checkpoint, wavs, capsys) -> None:
    # issue 13.4: `lalm chat --max-audio-seconds` and `lalm transcribe --max-seconds` refuse a
    # longer file from its header (2.3 s here), before decoding it
    assert cli.main(["chat", "--model", str(checkpoint), "--audio", wavs[1],
                     "--max-audio-seconds", "2", "Hi"]) == 2
    assert "the header declares 2.3 s" in capsys.readouterr().err
    assert cli.main(["transcribe", "--model", str(checkpoint), wavs[1],
                     "--max-seconds", "2"]) == 2
    err = capsys.readouterr().err
    assert "clip1.wav: longer than max_seconds=2 (the header declares 2.3 s)" in err
