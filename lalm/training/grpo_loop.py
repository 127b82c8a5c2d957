"""The GRPO stage's loop (``objective: grpo``), built like `lalm.training.loop.train`.

Each optimizer step takes ``grad_accum`` micro-batches of ``grpo.prompts`` prompts; for each it
samples ``grpo.group_size`` answers (`lalm.training.grpo.sample_answers`), scores them, gives
group advantages, and then, with the loss count over every micro-batch and rank known,
backpropagates each micro-batch's share of the step's loss (as the ``lm`` loop does). The KL
reference (``grpo.kl_coef > 0``) is the base model with the adapters switched off when LoRA is
all that trains, else a frozen copy of the starting (or ``grpo.reference``) weights.

The prompt order is a seeded permutation per epoch, split over ranks; the data position
(epoch, micro-batches consumed) goes into every checkpoint with the model, optimizer,
scheduler and RNGs (`lalm.training.state`), and the sampling seeds derive from it, so a resumed
run continues bit-identically. FSDP is refused under several ranks: ranks decode answers of
different lengths, which sharded parameters cannot follow.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lalm.checkpoint import load_model
from lalm.config import resolve_dtype
from lalm.data.collate import model_inputs
from lalm.errors import ConfigError
from lalm.model.lalm import IGNORE_INDEX
from lalm.model.lora import adapters_disabled
from lalm.training.build import (
    build_dataset,
    build_model,
    enable_grad_checkpointing,
    load_stage_tokenizer,
    may_skip_parts,
)
from lalm.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    no_grad_sync,
    shutdown,
    unwrap,
    wrap_model,
)
from lalm.training.dpo import token_logprobs
from lalm.training.exports import export_run
from lalm.training.grpo import (
    answer_text,
    answered_batch,
    group_advantages,
    grpo_loss,
    rollout_seeds,
    sample_answers,
)
from lalm.training.loop import TrainResult, seed_everything, to_device, update_allowed
from lalm.training.metrics import task_metrics
from lalm.training.optim import build_optimizer, build_scheduler
from lalm.training.rewards import check_rewards, score
from lalm.training.runlog import RunLog, Throughput
from lalm.training.stages import TrainConfig
from lalm.training.state import (
    TrainerState,
    load_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
)


class PromptStream:
    """This rank's prompt indices, `prompts` at a time, in a seeded order per epoch; the
    position lives in the `TrainerState` (epoch, micro-batches consumed)."""

    def __init__(self, size: int, prompts: int, seed: int, rank: int, world_size: int,
                 state: TrainerState) -> None:
        if size < prompts * world_size:
            raise ConfigError(f"grpo: {size} prompts cannot fill {prompts} per micro-batch on "
                              f"{world_size} rank(s)")
        self.size, self.prompts, self.seed = size, prompts, seed
        self.rank, self.world_size, self.state = rank, world_size, state

    def next(self) -> list[int]:
        """The next micro-batch's prompt indices (a new epoch when this one runs short)."""
        order = np.random.default_rng([self.seed, self.state.epoch]).permutation(self.size)
        mine = order[self.rank::self.world_size]
        start = self.state.consumed * self.prompts
        if start + self.prompts > len(mine):
            self.state.epoch, self.state.consumed = self.state.epoch + 1, 0
            return self.next()
        self.state.consumed += 1
        return [int(i) for i in mine[start:start + self.prompts]]


def _reference(config: TrainConfig, base: nn.Module) -> nn.Module | None:
    """A frozen copy for the KL term, or None (no KL, or LoRA-only: adapters switched off)."""
    if config.grpo.kl_coef == 0 or config.parts.adapter_only():
        return None
    source = (load_model(config.grpo.reference, dtype="fp32") if config.grpo.reference
              else copy.deepcopy(base))
    return source.eval().requires_grad_(False)


def _step_stats(micro: list[tuple[Any, Any, list[float], dict[str, float]]], totals: Tensor,
                dist: DistInfo) -> dict[str, float]:
    """The step's mean reward (total and per reward), KL and clipped fraction over every
    micro-batch of every rank."""
    names = sorted(micro[0][3])
    local = [sum(sum(m[2]) for m in micro), sum(len(m[2]) for m in micro),
             float(totals[1]), float(totals[2]), len(micro),
             *[sum(m[3][k] * len(m[2]) for m in micro) for k in names]]
    total = all_reduce_sum(torch.tensor(local, dtype=torch.float64), dist).tolist()
    answers, batches = max(total[1], 1), max(total[4], 1)
    return {"reward": total[0] / answers, "kl": total[2] / batches, "clipped": total[3] / batches,
            **{k: v / answers for k, v in zip(names, total[5:])}}


def train_grpo(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Run a GRPO stage (module docstring); `lalm.training.train` calls it for
    ``objective: grpo``.

    Raises:
        ConfigError, DataError, CheckpointError: bad config, data or checkpoints.
    """
    run, grpo = config.run, config.grpo
    check_rewards(grpo.rewards)
    dist = init_distributed(run.device)
    if dist.distributed and run.strategy == "fsdp":
        raise ConfigError("grpo runs under ddp only (run.strategy: fsdp shards the weights "
                          "that every rank's decoding needs whole)")
    amp_dtype = resolve_dtype(run.precision, dist.device)
    if amp_dtype == torch.float16:
        raise ConfigError("grpo: run.precision fp16 is not supported; use fp32 or bf16")
    seed_everything(run.seed, dist.rank)
    out_dir = Path(run.out_dir)
    ckpt_root = out_dir / "checkpoints"
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = load_stage_tokenizer(config)
    base = build_model(config, tokenizer).to(dist.device)
    reference = _reference(config, base)
    if reference is not None:
        reference.to(dist.device)
    if run.grad_checkpointing:
        enable_grad_checkpointing(base)
    n_mels = base.config.encoder.n_mels
    if config.data.on_bad_item == "skip":  # a rollout group needs every one of its prompts
        raise ConfigError("grpo: data.on_bad_item=skip is not supported; clean the manifest "
                          "(lalm data check) and use fail")
    # data.encoder_cache: each clip encoded once, not once per prompt and once per answer
    encoder = base.encoder if config.data.encoder_cache else None
    train_set, _ = build_dataset(config.data.train, config, tokenizer, n_mels, run.seed,
                                 encoder, base.audio_row_counts)
    # run.epochs: the steps of that many passes (every rank has at least this many prompts)
    config = config.with_steps(len(train_set) // dist.world_size // grpo.prompts)
    run = config.run
    if dist.main:
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    metric_examples = []
    if config.data.valid is not None:
        valid_set, _ = build_dataset([config.data.valid], config, tokenizer, n_mels,
                                     run.seed, row_counts=base.audio_row_counts)
        metric_examples = valid_set.examples[: run.metric_items]
    find_unused = run.find_unused_parameters
    if find_unused is None:
        find_unused = may_skip_parts(train_set, config.parts)
    model = wrap_model(base, run.strategy, dist, find_unused)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, run.max_steps)

    def autocast() -> Any:
        if amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(dist.device.type, dtype=amp_dtype)

    state = TrainerState()
    found = resumable_checkpoint(ckpt_root, dist) if resume else None  # verified
    if found is not None:
        state, _ = load_checkpoint(found, model, optimizer, scheduler, dist, verify=False)
    stream = PromptStream(len(train_set), grpo.prompts, run.seed, dist.rank, dist.world_size,
                          state)
    log = RunLog(out_dir, config, dist, state.step, run.max_steps)
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    log.start(config, trainable, sum(p.numel() for p in base.parameters()), run.max_steps,
              f"{grpo.prompts} prompt(s) x {grpo.group_size} answers x "
              f"{config.optim.grad_accum} micro-batch(es) a step; {dist.world_size} rank(s) on "
              f"{dist.device.type}" + (f"; resumed from {found}" if found is not None else ""))
    result = TrainResult(step=state.step, checkpoint=found, main=dist.main,
                         trainable_params=trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    meter = Throughput(state.step, state.tokens, state.samples)

    def save() -> Path:
        return save_checkpoint(ckpt_root, model, optimizer, scheduler, state, config.to_dict(),
                               dist, run.keep_last)

    def evaluate() -> None:
        if metric_examples and dist.main:
            with autocast():
                record = {"step": state.step, **task_metrics(unwrap(model), tokenizer,
                                                             metric_examples, run.max_new_tokens)}
            log.write(record)
            result.validation = record

    while state.step < run.max_steps:
        # 1. rollouts of every micro-batch with the policy before the step
        micro = []
        for _ in range(config.optim.grad_accum):
            seeds = rollout_seeds(run.seed, dist.rank, state.epoch, state.consumed,
                                  grpo.prompts * grpo.group_size)
            indices = stream.next()
            items = [train_set[i] for i in indices]
            examples = [train_set.examples[i] for i in indices for _ in range(grpo.group_size)]
            with autocast():
                answers = sample_answers(unwrap(model), items, tokenizer, grpo, seeds)
            rewards, means = score([answer_text(a, tokenizer) for a in answers], examples,
                                   grpo.rewards)
            advantages = group_advantages(torch.tensor(rewards), grpo.group_size,
                                          grpo.scale_rewards)
            batch = to_device(answered_batch(items, answers, grpo.group_size, tokenizer.eod_id),
                              dist.device)
            micro.append((batch, advantages.to(dist.device), rewards, means))
        # 2. the loss count of the whole step, then each micro-batch's share
        per_micro = [len(m[2]) if grpo.loss_agg == "sequence"
                     else int((m[0]["labels"][:, 1:] != IGNORE_INDEX).sum()) for m in micro]
        count = all_reduce_sum(torch.tensor(sum(per_micro), dtype=torch.float64), dist)
        totals = torch.zeros(3, dtype=torch.float64)  # loss, kl, clipped
        for i, (batch, advantages, _, _) in enumerate(micro):
            inputs = model_inputs(batch)
            labels = inputs.pop("labels")
            with no_grad_sync(model, skip=i < len(micro) - 1), autocast():
                logp, keep = token_logprobs(model(**inputs).logits, labels)
                ref_logp = None
                if grpo.kl_coef > 0:
                    with torch.no_grad():
                        if reference is None:
                            with adapters_disabled(unwrap(model)):
                                ref_logp = token_logprobs(unwrap(model)(**inputs).logits,
                                                          labels)[0]
                        else:
                            ref_logp = token_logprobs(reference(**inputs).logits, labels)[0]
                terms = grpo_loss(logp, logp.detach(), ref_logp, keep, advantages, grpo)
                (terms.total * dist.world_size / count.clamp(min=1)).backward()
            totals += torch.tensor([float(terms.total.detach()), terms.kl, terms.clipped],
                                   dtype=torch.float64)
        seen = all_reduce_sum(torch.tensor(
            [sum(int(m[0]["token_lens"].sum()) for m in micro),
             sum(len(m[0]["example_ids"]) for m in micro)], dtype=torch.float64), dist)
        state.tokens += int(seen[0])
        state.samples += int(seen[1])
        grad_norm = (torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
                     if config.optim.grad_clip > 0 else torch.zeros(()))
        loss_value = float(all_reduce_sum(totals[:1].clone(), dist)[0] / count.clamp(min=1))
        finite = math.isfinite(loss_value) and math.isfinite(float(grad_norm))
        if update_allowed(finite, loss_value, float(grad_norm), state, run, log):
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        result.losses.append(loss_value)
        log.advance()
        if state.step % run.log_every == 0 or state.step == run.max_steps:
            log.write({"step": state.step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "epoch": state.epoch,
                       **_step_stats(micro, totals, dist), "tokens": state.tokens,
                       "samples": state.samples,
                       **meter.rates(state.step, state.tokens, state.samples, run.max_steps)})
        if run.eval_every and state.step % run.eval_every == 0 and state.step < run.max_steps:
            evaluate()
        if run.save_every and state.step % run.save_every == 0 and state.step < run.max_steps:
            result.checkpoint = save()

    rates = meter.rates(state.step, state.tokens, state.samples, run.max_steps)
    result.tokens_per_s, result.examples_per_s = rates["tokens_per_s"], rates["samples_per_s"]
    result.step, result.skipped_steps = state.step, state.skipped_steps
    evaluate()
    result.checkpoint = save()
    if run.export:
        export_run(model, config, out_dir, dist.main)
        result.export_dir = out_dir / "export" if dist.main else None
        barrier(dist)
    log.close()
    shutdown(dist)
    return result

