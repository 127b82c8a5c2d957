"""Sequence packing in the training loop (``data.pack_tokens``): a packed batch gives the loss
and the gradients of the same batch unpacked, and a packed run the losses of an unpacked run.

The tiny model and the ~300-id BPE of `lalm.testing.training`; items are the tone dataset's
real WAV clips of 0.2-0.6 s, so their token lengths differ (audio slots scale with the clip).
"""

from __future__ import annotations

import json

import pytest
import torch

from lalm.data.collate import Collator, count_items
from lalm.errors import ConfigError
from lalm.testing.training import tiny_config, write_tiny_tokenizer, write_tone_dataset
from lalm.training import train
from lalm.training.build import build_dataset, build_model, load_stage_tokenizer
from lalm.training.loop import count_targets, loss_sum


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return write_tone_dataset(tmp_path_factory.mktemp("tones"), 6)


@pytest.fixture(scope="module")
def tokenizer_dir(tones, tmp_path_factory):
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"), tones)



def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = loss_sum(model, batch, "lm", 0.1, None)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def test_packed_batch_gives_the_unpacked_loss_and_gradients(tones, tokenizer_dir, tmp_path):
    config = tiny_config(tmp_path / "run", tones, tokenizer_dir)
    tokenizer = load_stage_tokenizer(config)
    model = build_model(config, tokenizer)
    dataset, _ = build_dataset(config.data.train, config, tokenizer,
                               model.config.encoder.n_mels, 0)
    items = [dataset[i] for i in range(len(dataset))]
    lengths = sorted(len(i["ids"]) for i in items)
    assert lengths[0] < lengths[-1]  # the rows really differ in length
    plain = Collator(tokenizer.eod_id)(items)
    packed = Collator(tokenizer.eod_id, pack_tokens=2 * lengths[-1])(items)
    assert packed["ids"].shape[0] < plain["ids"].shape[0]
    assert packed["ids"].numel() < plain["ids"].numel()  # less padding
    assert count_items(packed) == count_items(plain) == len(items)
    assert count_targets(packed, "lm") == count_targets(plain, "lm")

    loss, grads = _loss_and_grads(model, plain)
    packed_loss, packed_grads = _loss_and_grads(model, packed)
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    assert grads.keys() == packed_grads.keys() and any(n.startswith("encoder") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")

    # what this test guards against: the same rows with segments that leak (one segment id
    # per row, so every item attends to the items packed before it) compute something else,
    # far beyond the packed rows' rounding
    leaky = {**packed, "segment_ids": packed["segment_ids"].clamp(max=0)}
    _, leaky_grads = _loss_and_grads(model, leaky)

    def gap(other):
        return max(float((other[n] - g).norm() / g.norm().clamp(min=1e-12))
                   for n, g in grads.items())

    assert gap(leaky_grads) > 100 * max(gap(packed_grads), 1e-7)


def test_a_packed_run_has_the_losses_of_an_unpacked_run(tones, tokenizer_dir, tmp_path):
    runs = {}
    for name, pack in (("plain", None), ("packed", 4096)):
        config = tiny_config(tmp_path / name, tones, tokenizer_dir,
                        data={"max_items": 3, "bucket_ratio": 10.0, "pack_tokens": pack},
                        run={"max_steps": 4, "save_every": 0})
        runs[name] = train(config)
    assert runs["packed"].losses == pytest.approx(runs["plain"].losses, rel=1e-4)
    assert runs["plain"].losses[-1] < runs["plain"].losses[0]
    for name in runs:  # items, not rows, are counted
        lines = [json.loads(x) for x in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert lines[-1]["samples"] == 4 * 3


def test_packing_is_refused_where_it_cannot_apply(tones, tokenizer_dir, tmp_path):
    with pytest.raises(ConfigError, match="data.pack_tokens must be > 0"):
        tiny_config(tmp_path, tones, tokenizer_dir, data={"pack_tokens": 0})
    with pytest.raises(ConfigError, match="packs lm batches only"):
        tiny_config(tmp_path, tones, tokenizer_dir, data={"pack_tokens": 512}, objective="dpo")
