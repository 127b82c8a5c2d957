"""`lalm chat` and `lalm transcribe` in-process on a checkpoint directory saved by transformers
(random tiny weights beside the real Qwen2-Audio tokenizer and processor files)."""

from __future__ import annotations

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
