"""GRPO (Shao et al. 2024, DeepSeekMath) pieces: rollouts, group advantages and the loss.

For each prompt, G answers are sampled with lalm's batched KV-cache decoder
(`lalm.generation.generate`), scored by the stage's rewards (`lalm.training.rewards`) and
given group-relative advantages::

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)        (or r_i - mean_g(r): scale_rewards off)

The loss of answer token t of answer i, with the probability ratio ``rho = pi / pi_old``::

    l_it = -min(rho A_i, clip(rho, 1 - clip_low, 1 + clip_high) A_i) + kl_coef * k3_it
    k3_it = exp(ref - logp) - (ref - logp) - 1        (Schulman's unbiased, positive KL)

aggregated per answer (``sequence``: mean over the answer's tokens, then over answers, as GRPO)
or per token (``token``: over every answer token of the step, as DAPO). lalm samples fresh
answers for every optimizer step (one update per rollout), so ``pi_old`` is the policy itself
(detached): rho = 1 and the gradient is the plain policy gradient; the clip acts when a caller
passes older log-probabilities. ``clip_high > clip_low`` is DAPO's clip-higher.

Sampling is reproducible: each answer draws from its own generator (`generate`'s ``seeds``),
seeded from the run seed, the rank, the data position (which a checkpoint restores) and the
row (`rollout_seeds`); an answer does not depend on the other rows decoded with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lalm.data.collate import collate
from lalm.generation.generate import PromptBatch, generate, left_pad
from lalm.generation.options import GenerationOptions
from lalm.model import AudioLanguageModel
from lalm.model.lalm import IGNORE_INDEX, audio_rows_mask
from lalm.tokenizer import Tokenizer
from lalm.training.stages import GrpoConfig


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-6) -> Tensor:
    """Group-relative advantages (module docstring).

    Args:
        rewards: [P * G] float, the G answers of each prompt next to each other.
        group_size: G.
        scale: divide by the group's standard deviation (unbiased, as GRPO) plus `eps`.

    Returns:
        [P * G] float32; 0 for every answer of a group whose rewards are all equal.
    """
    groups = rewards.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.flatten()


@dataclass
class GrpoLoss:
    """A micro-batch's GRPO loss terms.

    Attributes:
        total: the sum of the loss terms (scalar, differentiable): per-answer means summed
            (``sequence``) or per-token losses summed (``token``).
        count: how many terms `total` sums (answers or tokens); the step divides by the count
            over every micro-batch and rank.
        kl: mean k3 KL per answer token (detached; 0 without a reference).
        clipped: fraction of answer tokens whose ratio was clipped (detached).
    """

    total: Tensor
    count: int
    kl: float
    clipped: float


def grpo_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, keep: Tensor,
              advantages: Tensor, config: GrpoConfig) -> GrpoLoss:
    """The clipped policy-gradient loss with optional KL (module docstring).

    Args:
        logp: [N, T] float32 log-probabilities of the answer tokens under the policy.
        old_logp: [N, T] the same under the policy that sampled them (detached).
        ref_logp: [N, T] the same under the reference, or None (no KL term).
        keep: [N, T] bool, True at answer tokens.
        advantages: [N] per answer.
        config: clip bounds, KL weight and aggregation.
    """
    high = config.clip_low if config.clip_high is None else config.clip_high
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    clipped_ratio = ratio.clamp(1 - config.clip_low, 1 + high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    kl = torch.zeros_like(per_token)
    if ref_logp is not None and config.kl_coef > 0:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + config.kl_coef * kl
    mask = keep.float()
    tokens = mask.sum()
    if config.loss_agg == "token":
        total, count = (per_token * mask).sum(), int(tokens)
    else:
        total = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
        count = logp.shape[0]
    n = float(tokens.clamp(min=1))
    return GrpoLoss(total, count, float((kl.detach() * mask).sum()) / n,
                    float(((ratio != clipped_ratio) & keep).sum()) / n)


def prompt_length(labels: Tensor) -> int:
    """Where the final answer starts in an item's [S] labels: the start of its last labelled
    run (earlier assistant turns of a chat stay prompt)."""
    positions = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    start = positions[-1]
    while start - 1 in positions:
        start -= 1
    return start


def rollout_seeds(seed: int, rank: int, epoch: int, consumed: int, rows: int) -> list[int]:
    """The per-row sampling seeds of the micro-batch at data position (epoch, consumed) of a
    rank: `rows` seeds, one per sampled answer."""
    rng = np.random.default_rng([seed, rank, epoch, consumed])
    return [int(s) for s in rng.integers(2**62, size=rows)]


@torch.no_grad()
def sample_answers(model: AudioLanguageModel, items: Sequence[dict[str, Any]],
                   tokenizer: Tokenizer, config: GrpoConfig, seeds: Sequence[int]
                   ) -> list[list[int]]:
    """G sampled answers per prompt item, in one left-padded decoding batch.

    Args:
        model: the unwrapped policy (set to eval for decoding, restored after).
        items: P `AudioTextDataset` items (or `EncodedDataset` items, with their clips'
            encoder states); their final answer is cut off to make the prompts.
        tokenizer: for the stop ids.
        config: G and the sampling options.
        seeds: P x G row seeds (`rollout_seeds`): each answer draws from its own generator, so
            it does not depend on the other rows of the batch.

    Returns:
        P x G token lists (the stop token kept when the answer stopped), prompt-major.
    """
    was_training = model.training
    model.eval()
    try:
        prompts = [item["ids"][: prompt_length(item["labels"])].tolist() for item in items]
        ids, mask = left_pad(prompts, tokenizer.eod_id)
        device = model.decoder.embed.weight.device
        ids, mask = ids.to(device), mask.to(device)
        slots = torch.isin(ids, torch.tensor(sorted(tokenizer.audio_slot_ids), device=device))
        batch = collate(list(items), tokenizer.eod_id)
        if batch["encoder_states"] is not None:  # `EncodedDataset` items (data.encoder_cache)
            rows = model.projector(batch["encoder_states"].to(device),
                                   batch["encoder_state_lens"].to(device))
            embeds = model.embed_prompt(ids, rows, slots & mask)
        elif batch["features"] is not None:
            rows = model.embed_audio(batch["features"].to(device),
                                     batch["feature_lens"].to(device))
            embeds = model.embed_prompt(ids, rows, slots & mask)
        else:
            embeds = model.decoder.embed(ids)
        g = config.group_size
        prompt = PromptBatch(ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0),
                             embeds.repeat_interleave(g, 0),
                             audio_rows_mask(slots & mask).repeat_interleave(g, 0))
        options = GenerationOptions(max_new_tokens=config.max_new_tokens,
                                    temperature=config.temperature, top_p=config.top_p,
                                    top_k=config.top_k)
        results = generate(model, prompt, options, tokenizer.stop_ids, tokenizer.decode,
                           seeds=seeds)
    finally:
        model.train(was_training)
    return [r.tokens for r in results]


def answer_text(tokens: Sequence[int], tokenizer: Tokenizer) -> str:
    """An answer's text for the rewards: decoded without its final stop token."""
    if tokens and tokens[-1] in tokenizer.stop_ids:
        tokens = tokens[:-1]
    return tokenizer.decode(list(tokens))


def answered_batch(items: Sequence[dict[str, Any]], answers: Sequence[Sequence[int]],
                   group_size: int, pad_id: int) -> dict[str, Any]:
    """The training batch of P x G rows: each prompt followed by one of its sampled answers,
    labels on the answer tokens only (a `collate` batch)."""
    rows = []
    for k, tokens in enumerate(answers):
        item = items[k // group_size]
        start = prompt_length(item["labels"])
        answer = torch.tensor(list(tokens), dtype=torch.int64)
        ids = torch.cat([item["ids"][:start], answer])
        labels = torch.cat([torch.full((start,), IGNORE_INDEX, dtype=torch.int64), answer])
        slots = torch.cat([item["audio_slot_mask"][:start], torch.zeros(len(answer), dtype=bool)])
        rows.append({**item, "id": f"{item['id']}#{k % group_size}", "ids": ids,
                     "labels": labels, "audio_slot_mask": slots})
    return collate(rows, pad_id)
