"""Training components on their own: stage configs, optimiser groups and schedule, LoRA, DPO."""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from lalm.data.manifest import AudioRef, Example, ExampleTask, ExampleTurn
from lalm.errors import ConfigError, DataError
from lalm.model.lalm import IGNORE_INDEX
from lalm.testing.models import random_model
from lalm.training.dpo import PreferencePair, dpo_loss, read_pairs, sequence_logprobs, write_pairs
from lalm.model.lora import LoRALinear, merge_lora
from lalm.training.lora import apply_lora
from lalm.training.optim import build_optimizer, param_groups, warmup_cosine
from lalm.training.stages import LoraConfig, OptimConfig, TrainConfig, apply_override

BASE = {"stage": "s", "model": {"preset": "tiny-random"},
        "data": {"tokenizer": "tok", "train": [{"manifest": "a.jsonl"}]}}


# ---------------------------------------------------------------- stages

def test_overrides_reach_nested_fields_and_list_items():
    data = {**BASE, "data": {**BASE["data"], "train": [{"manifest": "a.jsonl"}]}}
    for item in ("optim.lr=3e-4", "data.train.0.weight=2", "run.precision=bf16",
                 "lora.targets=[attn.q, attn.v]", "optim.betas=[0.9, 0.99]"):
        apply_override(data, item)
    config = TrainConfig.from_dict(data)
    assert config.optim.lr == 3e-4 and config.data.train[0].weight == 2.0
    assert config.lora.targets == ("attn.q", "attn.v") and config.optim.betas == (0.9, 0.99)
    assert config.run.precision == "bf16"
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown field"),
    ("parts.decoder=half", "parts.decoder"),
    ("optim.lr=fast", "optim.lr"),
    ("run.max_steps=0", "max_steps"),
    ("model.checkpoint=ckpt", "exactly one"),
    ("objective=ppo", "objective"),
    ("nothing", "key=value"),
])
def test_bad_fields_raise_config_errors_naming_them(override, message):
    data = copy.deepcopy(BASE)
    with pytest.raises(ConfigError, match=message):
        apply_override(data, override)
        TrainConfig.from_dict(data)


def test_every_part_frozen_is_refused():
    data = {**BASE, "parts": {"encoder": "frozen", "projector": "frozen", "decoder": "frozen"}}
    with pytest.raises(ConfigError, match="nothing would train"):
        TrainConfig.from_dict(data)


def test_missing_yaml_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        TrainConfig.from_file(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- optimiser

def test_param_groups_decay_only_matrices_and_skip_frozen():
    model = random_model()
    model.freeze_encoder()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert "decoder.layers.0.attn.q.weight" in decayed and "decoder.lm_head.weight" in decayed
    assert {"decoder.layers.0.attn.q.bias", "decoder.norm.weight", "decoder.embed.weight",
            "projector.ln_post.weight"} <= kept
    assert not any(n.startswith("encoder.") for n in decayed | kept)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, 4, 14, 0.1) for s in range(16)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == 1.0 and values[9] == pytest.approx(0.55)
    assert values[14] == values[15] == 0.1
    assert all(a >= b for a, b in itertools.pairwise(values[4:]))


def test_optimizer_refuses_a_frozen_model():
    model = random_model()
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        build_optimizer(model, OptimConfig())


# ---------------------------------------------------------------- LoRA

def test_lora_starts_as_the_base_model_and_merges_exactly(seed):
    model = random_model()
    ids = torch.randint(0, 500, (2, 7))
    before = model(ids).logits
    keys = set(model.state_dict())
    adapted = apply_lora(model.decoder, LoraConfig(rank=4, alpha=8.0), prefix="decoder")
    assert "decoder.layers.1.mlp.down" in adapted and "decoder.lm_head" not in adapted
    assert isinstance(model.decoder.layers[0].attn.q, LoRALinear)
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)
    for name in adapted:
        layer = model.get_submodule(name)
        assert not layer.weight.requires_grad and layer.lora_a.requires_grad
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.05)
    adapted_logits = model(ids).logits
    assert not torch.allclose(adapted_logits, before, atol=1e-3)
    assert merge_lora(model) == len(adapted)
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(ids).logits, adapted_logits, rtol=1e-5, atol=1e-5)


def test_lora_targets_that_match_nothing_are_an_error():
    with pytest.raises(ConfigError, match="match no Linear"):
        apply_lora(random_model().decoder, LoraConfig(targets=("nothing",)))


# ---------------------------------------------------------------- DPO

def test_sequence_logprobs_is_minus_the_summed_cross_entropy(seed):
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :2] = IGNORE_INDEX
    labels[1, 4:] = IGNORE_INDEX
    got = sequence_logprobs(logits, labels)
    for b in range(3):
        ce = F.cross_entropy(logits[b, :-1], labels[b, 1:], ignore_index=IGNORE_INDEX,
                             reduction="sum")
        assert got[b].item() == pytest.approx(-ce.item(), rel=1e-5)


def test_dpo_loss_formula():
    pc, pr = torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -1.0])
    rc, rr = torch.tensor([-4.0, -2.0]), torch.tensor([-4.0, -2.0])
    out = dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = [0.5 * ((-3 + 4) - (-5 + 4)), 0.5 * ((-2 + 2) - (-1 + 2))]
    expected = [math.log1p(math.exp(-m)) for m in margins]
    assert out.losses.tolist() == pytest.approx(expected)
    assert out.chosen_rewards.tolist() == pytest.approx([0.5, 0.0])
    # at the reference, the loss is log 2 whatever the answers
    assert dpo_loss(pc, pr, pc, pr, 0.1).losses.tolist() == pytest.approx([math.log(2)] * 2)


def test_preference_pairs_round_trip_and_answer_the_chat(tmp_path):
    chat = Example("c1", (), ExampleTask("text_chat", instruction="hi"), target="old",
                   messages=(ExampleTurn("user", "hi"), ExampleTurn("assistant", "old")))
    pair = PreferencePair("p1", chat, "good answer", "bad answer")
    write_pairs(tmp_path / "p.jsonl", [pair])
    assert read_pairs(tmp_path / "p.jsonl") == [pair]
    answered = pair.answered("good answer")
    assert answered.target == "good answer" and answered.messages[-1].text == "good answer"
    with pytest.raises(DataError, match="equal"):
        PreferencePair("p2", chat, "same", "same")
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        read_pairs(tmp_path / "bad.jsonl")


def test_truncate_log_keeps_steps_up_to_the_checkpoint(tmp_path):
    from lalm.training.runlog import truncate_log

    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    lines.append(json.dumps({"step": 2, "val_loss": 0.5}))
    log.write_text("\n".join(lines) + '\n{"step": 5, "lo')  # a line torn by SIGKILL
    truncate_log(log, 2)
    kept = [json.loads(x) for x in log.read_text().splitlines()]
    assert kept == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
                    {"step": 2, "val_loss": 0.5}]
    truncate_log(log, 0)  # a fresh run in the same folder starts an empty log
    assert log.read_text() == ""


def test_ddp_looks_for_unused_parameters_only_with_text_only_items(tmp_path):
    from lalm.training.build import may_skip_parts
    from lalm.training.stages import PartsConfig

    class Items:  # what may_skip_parts reads of a dataset
        def __init__(self, examples):
            self.examples = examples

    audio = Example("a", (AudioRef("a.wav"),), ExampleTask("asr"), "x")
    text = Example("t", (), ExampleTask("text_chat", instruction="hi"), "hello")
    trains_audio = PartsConfig(encoder="frozen", projector="lora", decoder="full")
    decoder_only = PartsConfig(encoder="frozen", projector="frozen", decoder="full")
    assert may_skip_parts(Items([audio, text]), trains_audio)
    assert not may_skip_parts(Items([audio, audio]), trains_audio)
    assert not may_skip_parts(Items([audio, text]), decoder_only)
