"""The three shipped stage files run as they are, one after the other, on the tiny Qwen-Audio (v1)
fixture checkpoint: stage 1 (tags, decoder frozen) -> stage 2 (SFT, encoder frozen, text-only
chats mixed in) -> stage 3 (DPO with LoRA on the decoder). Only paths and sizes are overridden,
exactly as the files' header comments tell a user to."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lalm.checkpoint import load_model
from lalm.data.manifest import Example, ExampleTask, ExampleTurn, read_manifest, write_manifest
from lalm.testing.training import write_tone_dataset
from lalm.training import TrainConfig, train
from lalm.training.dpo import PreferencePair, write_pairs
from lalm.training.stages import CONFIG_DIR

CONFIGS = CONFIG_DIR
pytestmark = pytest.mark.slow


def _run(stage: str, out: Path, checkpoint: Path, *overrides: str):
    config = TrainConfig.from_file(CONFIGS / f"{stage}.yaml", [
        f"model.checkpoint={checkpoint}", f"run.out_dir={out / stage}", "run.max_steps=2",
        "run.save_every=0", "run.metric_items=0", "run.progress=false", "run.eval_batches=1",
        "optim.warmup_steps=1", "optim.grad_accum=1", "run.precision=fp32", *overrides])
    return train(config)


def test_stage1_then_stage2_then_dpo_from_the_shipped_files(v1_fixture, tmp_path):
    train_set = write_tone_dataset(tmp_path / "tones", 3)
    valid_set = write_tone_dataset(tmp_path / "tones", 2, split="valid")
    chats = tmp_path / "text_chat.jsonl"
    write_manifest(chats, [Example(
        id="chat-0", audios=(), task=ExampleTask("text_chat", instruction="Say hello."),
        target="Hello.",
        messages=(ExampleTurn("user", "Say hello."), ExampleTurn("assistant", "Hello.")))])
    data = [f"data.train.0.manifest={train_set}", f"data.valid.manifest={valid_set}"]

    # stage 1: the decoder is frozen, the audio side trains
    one = _run("stage1_pretrain", tmp_path, v1_fixture, *data)
    start, after = load_model(v1_fixture), load_model(one.export_dir)
    assert torch.equal(start.decoder.layers[0].mlp.up.weight, after.decoder.layers[0].mlp.up.weight)
    assert not torch.equal(start.encoder.conv1.weight, after.encoder.conv1.weight)
    assert after.config.projector.audio_bos_eos  # exported in its own (v1) family

    # stage 2: the encoder is frozen, text-only chats are mixed in
    two = _run("stage2_sft", tmp_path, one.export_dir, *data,
               f"data.train.1.manifest={chats}")
    sft = load_model(two.export_dir)
    assert torch.equal(after.encoder.conv1.weight, sft.encoder.conv1.weight)
    up = after.decoder.layers[0].mlp.up.weight
    assert not torch.equal(up, sft.decoder.layers[0].mlp.up.weight)

    # stage 3: DPO on preference pairs, LoRA on the decoder, merged in the export
    item = read_manifest(train_set)[0]
    audio = item.audios[0].__class__(str(train_set.parent / item.audios[0].path))
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, [PreferencePair("p0", Example(**{**item.__dict__, "audios": (audio,)}),
                                       item.target, "B7")])
    three = _run("stage3_dpo", tmp_path, two.export_dir, f"data.train.0.manifest={pairs}",
                 f"data.valid.manifest={pairs}")
    assert three.losses[0] == pytest.approx(0.6931472, abs=1e-5)  # log 2: policy == reference
    dpo = load_model(three.export_dir)
    assert set(dpo.state_dict()) == set(sft.state_dict())  # LoRA merged, no adapter keys
    assert not torch.equal(sft.decoder.layers[0].attn.q.weight, dpo.decoder.layers[0].attn.q.weight)
    assert torch.equal(sft.encoder.conv1.weight, dpo.encoder.conv1.weight)
