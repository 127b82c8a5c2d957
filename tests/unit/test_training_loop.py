"""The training loop in process on a tiny model: loss falls, DPO starts at log 2, the export
(LoRA merged) loads in lalm and in transformers.

None of these is about the tokenizer: they use a ~300-id BPE learned on the tone data
(`write_tiny_tokenizer`), so the tiny model does not carry the 151k Qwen vocabulary."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lalm.checkpoint import load_model
from lalm.data.manifest import read_manifest
from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer
from lalm.training import TrainConfig, train
from lalm.training.dpo import PreferencePair, write_pairs


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    return write_tone_dataset(folder, 1), write_tone_dataset(folder, 4, split="valid")


@pytest.fixture(scope="module")
def tokenizer_dir(tones, tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), *tones)


@pytest.fixture(scope="module")
def vocab(tokenizer_dir):
    return len(load_tokenizer(tokenizer_dir))


def test_loss_falls_on_a_repeated_item_and_logs(tones, tokenizer_dir, vocab, tmp_path):
    config = TrainConfig.from_dict(tiny_stage(
        tmp_path / "run", tones[0], tokenizer_dir, vocab,
        optim={"lr": 1e-2, "warmup_steps": 1}, run={"max_steps": 6, "save_every": 0}))
    result = train(config)
    assert result.step == 6 and len(result.losses) == 6
    assert all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0] - 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["loss"] == pytest.approx(result.losses[-1])
    assert result.checkpoint.name == "step-00000006"


def test_dpo_starts_at_log2_and_moves_the_margin(tones, tokenizer_dir, vocab, tmp_path):
    example = read_manifest(tones[0])[0]
    example = example.__class__(**{**example.__dict__,
                                   "audios": (example.audios[0].__class__(
                                       str(tones[0].parent / example.audios[0].path)),)})
    write_pairs(tmp_path / "pairs.jsonl",
                [PreferencePair("p0", example, example.target, "B7")])
    config = TrainConfig.from_dict(tiny_stage(
        tmp_path / "run", tmp_path / "pairs.jsonl", tokenizer_dir, vocab,
        objective="dpo", dpo={"beta": 0.5}, parts={"encoder": "frozen", "projector": "frozen",
                                                   "decoder": "lora"},
        run={"max_steps": 4, "save_every": 0}))
    result = train(config)
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert result.losses[-1] < result.losses[0]


def test_export_merges_lora_and_loads_in_lalm_and_transformers(
        tones, tokenizer_dir, vocab, tmp_path):
    config = TrainConfig.from_dict(tiny_stage(
        tmp_path / "run", tones[0], tokenizer_dir, vocab,
        data={"valid": {"manifest": str(tones[1])}},
        parts={"encoder": "full", "projector": "full", "decoder": "lora"},
        run={"max_steps": 2, "export": True, "metric_items": 4, "max_new_tokens": 3}))
    result = train(config)
    assert "accuracy" in result.validation and "val_loss" in result.validation
    export = result.export_dir
    ours = load_model(export)
    assert not any("lora" in k for k in ours.state_dict())
    trained = torch.load(result.checkpoint / "model.pt", weights_only=True)
    adapted = trained["decoder.layers.0.attn.q.weight"]
    assert not torch.equal(ours.decoder.layers[0].attn.q.weight, adapted)  # merged delta
    assert load_tokenizer(export).family == load_tokenizer(tokenizer_dir).family
    transformers = pytest.importorskip("transformers")
    ref = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(export).eval()
    ids = torch.tensor([load_tokenizer(export).encode("<|im_start|>user\nHello<|im_end|>")])
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=ids).logits.float(), ours(ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_every_validation_scores_the_same_held_out_batches(tones, tokenizer_dir, vocab, tmp_path):
    # 4 held-out items, one per batch; 2 of them scored after each of 5 steps. With a learning
    # rate too small to move the weights, every validation must give the same loss: the same
    # batches each time (before, the loader went on where the last validation stopped and ran
    # dry, giving 0.0).
    config = TrainConfig.from_dict(tiny_stage(
        tmp_path / "run", tones[0], tokenizer_dir, vocab,
        data={"valid": {"manifest": str(tones[1])}, "max_items": 1},
        optim={"lr": 1e-12, "warmup_steps": 0},
        run={"max_steps": 5, "save_every": 0, "eval_every": 1, "eval_batches": 2,
             "metric_items": 0}))
    train(config)
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["val_loss"] for r in lines if "val_loss" in r]
    assert len(losses) == 5 and losses[0] > 0
    assert losses == pytest.approx([losses[0]] * 5, rel=1e-5)
