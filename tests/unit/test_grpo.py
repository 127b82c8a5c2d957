"""GRPO pieces on hand-made numbers and strings, and its loss on a tiny model: group advantages,
the rewards, the clipped loss and its aggregation, and the sign of one step's update."""

from __future__ import annotations

import math

import pytest
import torch

from lalm.data.manifest import AudioRef, Example, ExampleTask
from lalm.errors import ConfigError, DataError, GenerationError
from lalm.generation import GenerationOptions
from lalm.generation.generate import PromptBatch, generate, left_pad
from lalm.model.lalm import IGNORE_INDEX
from lalm.testing.models import random_model
from lalm.training.dpo import token_logprobs
from lalm.training.grpo import group_advantages, grpo_loss, prompt_length, rollout_seeds
from lalm.model.lora import LoRALinear, adapters_disabled
from lalm.training.rewards import (
    REWARDS,
    check_rewards,
    choice,
    exact_match,
    final_answer,
    normalized_match,
    register_reward,
    score,
    think_format,
    wer,
)
from lalm.training.stages import GrpoConfig


def _example(target: str, answer: str | None = None, choices: tuple[str, ...] = (),
             language: str | None = None) -> Example:
    task = ExampleTask("question", instruction="?", choices=choices, audio_language=language)
    return Example(id="x", audios=(AudioRef("a.wav"),), target=target, answer=answer, task=task)


def test_advantages_are_relative_to_each_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    raw = group_advantages(rewards, 4, scale=False)
    assert raw.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    scaled = group_advantages(rewards, 4)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std().item()  # unbiased, as GRPO
    assert scaled[:4].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std],
                                                rel=1e-5)
    assert scaled[4:].tolist() == [0.0] * 4  # equal rewards: no signal, no division by zero


def test_answer_rewards_on_hand_made_strings() -> None:
    dog = _example("dog", "dog", ("cat", "dog", "A bird"))
    assert exact_match(" dog\n", dog) == 1.0 and exact_match("Dog", dog) == 0.0
    assert normalized_match("Dog.", dog) == 1.0
    assert choice("B", dog) == 1.0 and choice("The answer is B.", dog) == 1.0
    assert choice("dog", dog) == 1.0 and choice("A", dog) == 0.0
    assert choice("A bird", dog) == 0.0  # another choice's text, though it starts with "A"
    with pytest.raises(DataError, match="single-choice"):
        choice("B", _example("dog"))
    speech = _example("the cat sat on the mat", language="en")
    assert wer("the cat sat on the mat", speech) == 1.0
    assert wer("the cat sat on a mat", speech) == pytest.approx(1 - 1 / 6)
    assert wer("nothing like it at all here or there", speech) == 0.0  # WER above 1: floor 0


def test_think_then_answer() -> None:
    dog = _example("dog")
    text = "<think>It barks, so a dog.</think> <answer>dog</answer>"
    assert final_answer(text) == "dog" and exact_match(text, dog) == 1.0
    assert think_format(text, dog) == 1.0
    assert think_format("dog", dog) == 0.0
    assert think_format("<think>hmm</think>", dog) == 0.0  # no answer after the thought
    assert final_answer("<think>a</think>b</think> dog ") == "dog"


def test_score_weights_and_means() -> None:
    dog = _example("dog")
    totals, means = score(["dog", "<think>x</think>dog", "cat"], [dog] * 3,
                          {"exact_match": 1.0, "format": 0.5})
    assert totals == [1.0, 1.5, 0.0]
    assert means == {"reward_exact_match": pytest.approx(2 / 3),
                     "reward_format": pytest.approx(1 / 3)}


def test_bad_reward_configs_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown reward 'exactmatch'"):
        check_rewards({"exactmatch": 1.0})
    with pytest.raises(ConfigError, match="weight must be a number"):
        check_rewards({"exact_match": "high"})
    with pytest.raises(ConfigError, match="exists already"):
        register_reward("wer", REWARDS["wer"])
    with pytest.raises(ConfigError, match="group_size"):
        GrpoConfig(group_size=1)


def _logp(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values).log()


def test_ratio_clip_and_clip_higher() -> None:
    # one token per answer; old probability 0.5; new 0.8 (ratio 1.6) and 0.2 (ratio 0.4)
    old = _logp([[0.5], [0.5]])
    new = _logp([[0.8], [0.2]])
    keep = torch.ones(2, 1, dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0])
    plain = grpo_loss(new, old, None, keep, adv, GrpoConfig(clip_low=0.2))
    # positive advantage: min(1.6, 1.2) * 1; negative: min(-0.4, -0.8) -> -0.8 ... negated
    assert float(plain.total) == pytest.approx(-1.2 + 0.8)
    assert plain.clipped == 1.0 and plain.count == 2
    higher = grpo_loss(new, old, None, keep, adv, GrpoConfig(clip_low=0.2, clip_high=0.28))
    assert float(higher.total) == pytest.approx(-1.28 + 0.8)


def test_sequence_and_token_aggregation_and_kl() -> None:
    logp = torch.zeros(2, 3)
    keep = torch.tensor([[True, True, True], [True, False, False]])
    adv = torch.tensor([1.0, 2.0])
    seq = grpo_loss(logp, logp, None, keep, adv, GrpoConfig())
    assert float(seq.total) == pytest.approx(-(1.0 + 2.0)) and seq.count == 2
    tok = grpo_loss(logp, logp, None, keep, adv, GrpoConfig(loss_agg="token"))
    assert float(tok.total) == pytest.approx(-(3 * 1.0 + 2.0)) and tok.count == 4
    ref = torch.full((2, 3), math.log(0.5))
    kl = grpo_loss(logp, logp, ref, keep, torch.zeros(2), GrpoConfig(kl_coef=0.5))
    k3 = 0.5 - math.log(0.5) - 1  # exp(d) - d - 1 at d = log 0.5
    assert kl.kl == pytest.approx(k3) and float(kl.total) == pytest.approx(0.5 * k3 * 2)
    none = grpo_loss(logp, logp, ref, keep, torch.zeros(2), GrpoConfig(kl_coef=0.0))
    assert none.kl == 0.0 and float(none.total) == 0.0


def test_one_step_raises_the_better_answers_logprob() -> None:
    """Two answers to one prompt, rewards 1 and 0: after one SGD step on the GRPO loss the
    rewarded answer is likelier and the other less likely."""
    torch.manual_seed(0)
    model = random_model("tiny-random", seed=3).train()
    prompt = [5, 17, 42, 9]
    answers = [[100, 101, 102], [200, 201, 202]]
    ids = torch.tensor([prompt + a for a in answers])
    labels = ids.clone()
    labels[:, : len(prompt)] = IGNORE_INDEX
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def logps() -> torch.Tensor:
        logp, keep = token_logprobs(model(ids).logits, labels)
        return logp, keep

    logp, keep = logps()
    before = logp.sum(-1).detach()
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)
    grpo_loss(logp, logp.detach(), None, keep, adv, GrpoConfig()).total.backward()
    optimizer.step()
    with torch.no_grad():
        after = logps()[0].sum(-1)
    assert after[0] > before[0] and after[1] < before[1]


def test_adapters_disabled_is_the_base_model() -> None:
    model = random_model("tiny-random", seed=4)
    ids = torch.arange(3, 20)[None]
    with torch.no_grad():
        base = model(ids).logits
        layer = LoRALinear.from_linear(model.decoder.layers[0].attn.q, 2, 4.0)
        layer.lora_b.fill_(0.5)
        model.decoder.layers[0].attn.q = layer
        adapted = model(ids).logits
        with adapters_disabled(model):
            off = model(ids).logits
        assert torch.equal(model(ids).logits, adapted)  # back on after the block
    assert torch.equal(off, base) and not torch.equal(adapted, base)


def test_prompt_length_and_seeds() -> None:
    labels = torch.tensor([IGNORE_INDEX, 3, 4, IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9])
    assert prompt_length(labels) == 5  # an earlier labelled turn stays prompt
    assert rollout_seeds(0, 0, 1, 2, 3) == rollout_seeds(0, 0, 1, 2, 3)
    seeds = {s for r in (0, 1) for e in (0, 1) for c in (0, 1)
             for s in rollout_seeds(0, r, e, c, 2)}
    assert len(seeds) == 16


def test_seeds_make_a_row_independent_of_its_batch() -> None:
    model = random_model("tiny-random", seed=6)
    rows = [[5, 6, 7, 8, 9], [11, 12], [40, 41, 42]]
    options = GenerationOptions(max_new_tokens=8, temperature=1.5)

    def run(prompts: list[list[int]], seeds: list[int]) -> list[list[int]]:
        ids, mask = left_pad(prompts, 0)
        batch = PromptBatch(ids, mask, model.decoder.embed(ids).detach())
        return [r.tokens for r in generate(model, batch, options, (), None, seeds)]

    together = run(rows, [1, 2, 3])
    assert run(rows[1:2], [2]) == together[1:2]  # alone, with its own seed: the same answer
    assert run(rows, [1, 2, 3]) == together
    assert run(rows, [1, 9, 3])[1] != together[1]
    with pytest.raises(GenerationError, match="seeds"):
        run(rows, [1, 2])


def test_prompt_stream_splits_ranks_and_rolls_over_epochs() -> None:
    from lalm.training.grpo_loop import PromptStream
    from lalm.training.state import TrainerState

    states = [TrainerState(), TrainerState()]
    streams = [PromptStream(5, 2, 0, rank, 2, s) for rank, s in enumerate(states)]
    first = [streams[r].next() for r in (0, 1)]
    assert sorted(first[0] + first[1]) == sorted(set(first[0] + first[1]))  # disjoint
    again = [streams[r].next() for r in (0, 1)]  # 5 prompts, 2 ranks: 2 per rank per epoch
    assert [s.epoch for s in states] == [1, 1] and [s.consumed for s in states] == [1, 1]
    resumed = PromptStream(5, 2, 0, 0, 2, TrainerState(epoch=1, consumed=0))
    assert resumed.next() == again[0]  # the position alone fixes what comes next
    with pytest.raises(ConfigError, match="cannot fill"):
        PromptStream(3, 2, 0, 0, 2, TrainerState())
