"""What a run does with bad data (empty targets, a corrupt clip, a malformed row: issue 13.7) and
what it says at the start (threads, trainable parameters: issues 14.11, training summary)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from lalm.data.manifest import read_manifest, write_manifest
from lalm.errors import DataError
from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer
from lalm.training import TrainConfig, train
from lalm.training.build import build_model
from lalm.training.distributed import choose_threads


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tone_dataset(tmp_path_factory.mktemp("tones"), 4)


@pytest.fixture(scope="module")
def tokenizer_dir(tones, tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), tones)


def _config(manifest, tokenizer_dir, tmp_path, data=None, **sections) -> TrainConfig:
    return TrainConfig.from_dict(tiny_stage(
        tmp_path / "run", manifest, tokenizer_dir, len(load_tokenizer(tokenizer_dir)),
        data={"max_items": 1, **(data or {})},
        run={"max_steps": 4, "save_every": 0, **sections.pop("run", {})}, **sections))


def _copy(tones, tmp_path, change) -> object:
    """The tone manifest rewritten beside its audio with `change(index, example)` applied."""
    examples = [change(i, e) for i, e in enumerate(read_manifest(tones))]
    path = tones.parent / f"{tmp_path.name}.jsonl"
    write_manifest(path, examples)
    return path


def test_empty_targets_are_refused_with_a_count_or_skipped(tones, tokenizer_dir, tmp_path):
    manifest = _copy(tones, tmp_path, lambda i, e: dataclasses.replace(
        e, target="" if i < 2 else e.target, answer=None))
    with pytest.raises(DataError, match=r"2 bad item\(s\).*empty target.*on_bad_item=skip"):
        train(_config(manifest, tokenizer_dir, tmp_path))
    with pytest.warns(UserWarning, match=r"skipping 2 bad item\(s\)"):
        result = train(_config(manifest, tokenizer_dir, tmp_path, {"on_bad_item": "skip"}))
    assert result.step == 4 and result.skipped_items == 2


def test_a_corrupt_clip_and_a_malformed_row_are_skipped_and_counted(tones, tokenizer_dir,
                                                                       tmp_path):
    # items 1 and 2 point at garbage files. Item 1's window is given, so batching never opens
    # its file: it fails only when a batch reads it, as a corrupt row did after 1-2 steps; item
    # 2's header is read (for its length) before the first step.
    def change(i, e):
        if i not in (1, 2):
            return e
        bad = tones.parent / "audio" / f"corrupt-{tmp_path.name}-{i}.wav"
        bad.write_bytes(np.random.default_rng(i).bytes(8000))
        return dataclasses.replace(e, audios=(dataclasses.replace(
            e.audios[0], path=str(bad.relative_to(tones.parent)),
            duration=0.2 if i == 1 else None),))

    manifest = _copy(tones, tmp_path, change)
    with open(manifest, "a") as f:
        f.write('{"id": "broken", "audios": [\n')
    with pytest.raises(DataError, match="broken|not JSON"):
        train(_config(manifest, tokenizer_dir, tmp_path))
    with pytest.warns(UserWarning):
        result = train(_config(manifest, tokenizer_dir, tmp_path, {"on_bad_item": "skip"},
                               run={"max_steps": 6}))
    assert result.step == 6 and len(result.losses) == 6
    # the malformed row, item 2 (at the start), item 1 once per epoch it comes up in
    assert result.skipped_items >= 3
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("train-001" in r.get("bad_item", "") for r in log)


def test_the_start_line_gives_threads_and_trainable_parameters(tones, tokenizer_dir, tmp_path,
                                                                capsys):
    config = _config(tones, tokenizer_dir, tmp_path, run={"max_steps": 1, "threads": 1},
                     optim={"warmup_steps": 0},
                     parts={"encoder": "frozen", "projector": "frozen", "decoder": "lora"})
    before = torch.get_num_threads()
    result = train(config)
    model = build_model(config, load_tokenizer(tokenizer_dir))
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora" in n)
    assert result.threads == 1 and torch.get_num_threads() == before  # the caller's, restored
    assert result.trainable_params == lora > 0
    err = capsys.readouterr().err
    assert f"{lora:,} of " in err and "parameters train" in err and "1 torch thread" in err


def test_automatic_threads_stay_within_the_cpus_and_share_them_among_ranks(monkeypatch):
    threads, why = choose_threads()
    assert 1 <= threads <= torch.get_num_threads() and "auto" in why
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1000")
    assert choose_threads()[0] == 1
    assert choose_threads(3) == (3, "run.threads")


def test_an_audio_root_a_manifest_would_ignore_is_refused(tmp_path):
    # the readers resolve relative paths against the manifest's folder; another audio_root used
    # to be ignored silently, so a same-named clip beside the manifest trained instead
    from lalm.errors import ConfigError
    from lalm.training.build import build_dataset
    from lalm.training.stages import DataSource, TrainConfig

    manifest = tmp_path / "data" / "train.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("")
    config = TrainConfig.from_file("sft", [f"data.train={manifest}", "data.valid=null"])
    source = DataSource(str(manifest), audio_root=str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="audio_root.*its own folder"):
        build_dataset([source], config, None, 128, seed=0)
