"""The frozen encoder's cache: each clip's states are the encoder's output for it alone (bit for
bit), a cached batch gives the uncached batch's loss and gradients, a cached training run follows
the uncached one, GRPO's rollouts and answer log-probabilities are those of uncached items, and
the cache is refused where it would go stale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lalm.config import ModelConfig
from lalm.data.collate import collate, model_inputs
from lalm.data.dataset import AudioTextDataset
from lalm.data.manifest import read_manifest
from lalm.errors import ConfigError
from lalm.prompt import QWEN2_AUDIO_SPECIAL_TOKENS
from lalm.testing.models import random_model
from lalm.testing.training import tiny_stage, write_tone_dataset
from lalm.tokenizer import Tokenizer
from lalm.training import TrainConfig, train
from lalm.training.bpe import corpus, train_tokenizer
from lalm.training.dpo import token_logprobs
from lalm.training.encoder_cache import EncodedDataset, encode_clip
from lalm.training.grpo import answered_batch, sample_answers
from lalm.training.stages import GrpoConfig

VOCAB = 320


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Tokenizer]:
    manifest = write_tone_dataset(tmp_path, 6)
    tok = train_tokenizer(corpus(read_manifest(manifest)), tmp_path / "tok", vocab_size=300,
                          min_frequency=1, specials=QWEN2_AUDIO_SPECIAL_TOKENS)
    assert len(tok) <= VOCAB
    return manifest, tok


def _model() -> torch.nn.Module:
    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": VOCAB})
    model = random_model(config, seed=3)
    model.encoder.requires_grad_(False)
    return model


def _dataset(manifest: Path, tok: Tokenizer) -> AudioTextDataset:
    return AudioTextDataset(read_manifest(manifest), tok, 128, audio_root=manifest.parent)


def test_states_are_the_encoder_output_of_each_clip_alone(data: tuple[Path, Tokenizer]) -> None:
    manifest, tok = data
    model, plain = _model(), _dataset(manifest, tok)
    cached = EncodedDataset(plain, model.encoder)
    assert len(cached) == len(plain) and cached.lengths == plain.lengths
    for i in range(len(plain)):
        item, hit = plain[i], cached[i]
        assert torch.equal(hit["ids"], item["ids"]) and torch.equal(hit["labels"], item["labels"])
        assert hit["features"] == [] and len(hit["encoder_states"]) == len(item["features"])
        with torch.no_grad():
            x, lens = model.encoder(item["features"][0][None], item["feature_lens"][:1])
        assert torch.equal(hit["encoder_states"][0], x[0, : int(lens[0])])
        n = int(item["feature_lens"][0])
        assert torch.equal(encode_clip(model.encoder, item["features"][0], n),
                           hit["encoder_states"][0])


def test_cached_batch_gives_the_uncached_loss_and_gradients(
        data: tuple[Path, Tokenizer]) -> None:
    manifest, tok = data
    model, plain = _model(), _dataset(manifest, tok)
    cached = EncodedDataset(plain, model.encoder)
    results = []
    for dataset in (plain, cached):
        batch = collate([dataset[i] for i in range(4)], tok.eod_id)
        model.zero_grad(set_to_none=True)
        loss = model(**model_inputs(batch)).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((batch, loss.detach(), grads))
    (plain_batch, plain_loss, plain_grads), (hit_batch, hit_loss, hit_grads) = results
    assert plain_batch["encoder_states"] is None and hit_batch["features"] is None
    assert hit_batch["encoder_states"].shape[0] == 4
    assert torch.equal(hit_batch["clip_counts"], plain_batch["clip_counts"])
    torch.testing.assert_close(hit_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert hit_grads.keys() == plain_grads.keys() and hit_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(hit_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_cached_run_follows_the_uncached_run(tmp_path: Path,
                                               data: tuple[Path, Tokenizer]) -> None:
    manifest = data[0]
    runs = []
    for cache in (False, True):
        config = TrainConfig.from_dict(tiny_stage(
            tmp_path / f"run-{cache}", manifest, tmp_path / "tok", VOCAB,
            parts={"encoder": "frozen", "projector": "full", "decoder": "full"},
            data={"max_items": 2, "encoder_cache": cache},
            run={"max_steps": 4, "save_every": 0, "log_every": 1, "progress": False,
                 "export": False, "metric_items": 0}))
        runs.append(train(config).losses)
    assert len(runs[0]) == 4
    torch.testing.assert_close(torch.tensor(runs[1]), torch.tensor(runs[0]), rtol=1e-5, atol=1e-6)


def test_a_trainable_encoder_is_refused(data: tuple[Path, Tokenizer], tmp_path: Path) -> None:
    manifest, tok = data
    model = _model()
    model.encoder.requires_grad_(True)
    with pytest.raises(ConfigError, match="frozen encoder"):
        EncodedDataset(_dataset(manifest, tok), model.encoder)
    stage = tiny_stage(tmp_path / "run", manifest, tmp_path / "tok", VOCAB,
                       data={"encoder_cache": True})  # tiny_stage trains the encoder
    with pytest.raises(ConfigError, match="encoder_cache"):
        TrainConfig.from_dict(stage)


def test_grpo_rollouts_and_logprobs_are_those_of_uncached_items(
        data: tuple[Path, Tokenizer], tmp_path: Path) -> None:
    manifest, tok = data
    model, plain = _model(), _dataset(manifest, tok)
    cached = EncodedDataset(plain, model.encoder)
    config = GrpoConfig(group_size=3, prompts=2, max_new_tokens=5, temperature=1.5)
    runs = []
    for dataset in (plain, cached):
        items = [dataset[i] for i in range(2)]
        answers = sample_answers(model, items, tok, config, list(range(6)))
        inputs = model_inputs(answered_batch(items, answers, 3, tok.eod_id))
        labels = inputs.pop("labels")
        with torch.no_grad():
            logp, keep = token_logprobs(model(**inputs).logits, labels)
        runs.append((answers, logp[keep]))
    assert runs[1][0] == runs[0][0]  # the same sampled answers, seed for seed
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-5, atol=1e-5)
    stage = tiny_stage(tmp_path / "grpo", manifest, tmp_path / "tok", VOCAB,
                       parts={"encoder": "frozen", "projector": "full", "decoder": "full"},
                       data={"encoder_cache": True})
    stage["objective"] = "grpo"
    assert TrainConfig.from_dict(stage).data.encoder_cache  # allowed for GRPO too
