"""The training loop: one function, `train(config)`, readable top to bottom.

1. join torchrun's process group (or run alone), pick the CPU threads (`choose_threads`), seed
   every generator;
2. build tokenizer, model (trainable parts, LoRA), the DPO reference, the datasets (bad items:
   ``data.on_bad_item``) and the bucketing sampler (``data.pack_tokens``: each batch's items
   packed into rows, `lalm.data.collate.pack_items`), AdamW and the warmup-cosine schedule
   (``run.epochs``: its length in passes over the mix); print the trainable-parameter count;
3. resume from the newest intact checkpoint when asked (checksums verified; model, optimizer,
   scheduler, data position, RNGs: the continuation is bit-identical to an uninterrupted run);
4. each step: take ``grad_accum`` micro-batches, count their targets over all ranks, backprop
   each micro-batch's share of the global loss, clip, step, schedule; a NaN/inf loss stops the
   run before the update (`TrainingError`) or, with ``run.on_nonfinite: skip``, drops the update;
5. log (`lalm.training.runlog`: JSONL, tqdm, TensorBoard, Weights & Biases / SwanLab; loss, lr,
   tokens/s, samples/s, ETA), validate (held-out loss and task metrics), save checkpoints;
6. at the end: a last checkpoint and the export (Qwen2-Audio HF layout, LoRA merged); when
   LoRA is all that trained, also ``adapter/``: the adapters alone in PEFT's format.

The ``lm`` loss runs ``lm_head`` only at positions with a target (``output="targets"``): prompts,
audio and padding never pay for the vocabulary projection. ``log.jsonl`` holds exactly the
steps of the run's checkpoints: a resumed run first cuts it back to its checkpoint's step.

Loss normalisation: the step's loss is the sum of per-target losses (``lm``: target tokens;
``dpo``: pairs) over every micro-batch on every rank, divided by their global count. Each
micro-batch backpropagates ``its loss sum x world_size / global count`` because DDP and FSDP
average gradients over ranks; so one process with ``grad_accum = k x w`` and ``w`` processes with
``grad_accum = k`` compute the same gradient from the same batches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from lalm.checkpoint import load_model
from lalm.config import resolve_dtype
from lalm.data.collate import Collator, count_items, model_inputs
from lalm.data.sampler import BucketBatchSampler, HeldOutBatches
from lalm.errors import TrainingError
from lalm.model.lalm import IGNORE_INDEX
from lalm.training.build import (
    SkipBadCollator,
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
    choose_threads,
    init_distributed,
    no_grad_sync,
    shutdown,
    torch_threads,
    unwrap,
    wrap_model,
)
from lalm.training.dpo import PairCollator, dpo_loss, sequence_logprobs
from lalm.training.exports import export_run
from lalm.training.metrics import task_metrics
from lalm.training.optim import build_optimizer, build_scheduler
from lalm.training.runlog import RunLog, Throughput
from lalm.training.stages import RunConfig, TrainConfig
from lalm.training.state import (
    TrainerState,
    load_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
)


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        step: optimizer steps done (max_steps unless stopped early).
        losses: training loss of each step run by this call (global, all ranks).
        validation: the last validation record (val_loss and task metrics), if any.
        checkpoint: the last full-state checkpoint folder.
        export_dir: the exported HF checkpoint, if written.
        tokens_per_s, examples_per_s: training throughput of this call (all ranks).
        skipped_steps: steps of the whole run whose update was dropped for a non-finite loss
            (``run.on_nonfinite: skip``).
        skipped_items: bad data items left out over the whole run (``data.on_bad_item: skip``).
        threads: torch CPU threads the run used.
        trainable_params: parameters that get gradients (LoRA: the adapters' only).
        main: True on the rank that logs and reports (rank 0; the only one in one process).
    """

    step: int
    losses: list[float] = field(default_factory=list)
    validation: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    export_dir: Path | None = None
    tokens_per_s: float = 0.0
    examples_per_s: float = 0.0
    skipped_steps: int = 0
    skipped_items: int = 0
    threads: int = 1
    trainable_params: int = 0
    main: bool = True


def seed_everything(seed: int, rank: int) -> None:
    """Seed Python, NumPy and torch; ranks get different streams (dropout differs per rank)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


class BatchStream:
    """Micro-batches across epochs, counting what this rank consumed (the resumable position:
    DataLoader workers prefetch, so the sampler's own position runs ahead)."""

    def __init__(self, loader: DataLoader, sampler: BucketBatchSampler,
                 state: TrainerState) -> None:
        self.loader, self.sampler, self.state = loader, sampler, state
        self._it: Any = None
        self.bad_items: list[str] = []  # reasons of the items left out since the last drain

    def next(self) -> dict[str, Any]:
        """The next micro-batch (a new epoch starts when one runs out)."""
        while True:
            if self._it is None:
                self.sampler.load_state_dict({"seed": self.sampler.seed,
                                              "epoch": self.state.epoch,
                                              "position": self.state.consumed})
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self.state.epoch, self.state.consumed, self._it = self.state.epoch + 1, 0, None
                continue
            self.state.consumed += 1
            self.bad_items += batch.pop("bad_items", [])
            if "ids" in batch:  # else every item of it was bad (data.on_bad_item: skip)
                return batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the batch's tensors to `device`."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


def count_targets(batch: dict[str, Any], objective: str) -> int:
    """How many terms a micro-batch adds to the loss: target tokens (lm) or pairs (dpo)."""
    if objective == "dpo":
        return len(batch["example_ids"]) // 2
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def loss_sum(model: nn.Module, batch: dict[str, Any], objective: str, beta: float,
             reference: nn.Module | None) -> Tensor:
    """Sum of the micro-batch's loss terms (scalar float32, differentiable).

    lm: mean next-token cross-entropy x target tokens. dpo: the pairs' DPO losses summed; the
    batch holds P chosen rows then P rejected rows (`PairCollator`).
    """
    inputs = model_inputs(batch)
    if objective == "lm":
        n = count_targets(batch, objective)
        out = model(**inputs, output="targets")
        return out.loss * n if n else out.logits.sum() * 0.0
    labels = inputs.pop("labels")
    policy = sequence_logprobs(model(**inputs).logits, labels)
    with torch.no_grad():
        ref = sequence_logprobs(reference(**inputs).logits, labels)
    p = policy.shape[0] // 2
    return dpo_loss(policy[:p], policy[p:], ref[:p], ref[p:], beta).losses.sum()


def _loader(dataset: Any, sampler: Sampler[list[int]], config: TrainConfig,
            pad_id: int) -> DataLoader:
    collate: Callable = (PairCollator(pad_id) if config.objective == "dpo"
                         else Collator(pad_id, config.data.pack_tokens))
    if config.data.on_bad_item == "skip":
        collate = SkipBadCollator(collate)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                      num_workers=config.data.num_workers)


def _sampler(dataset: Any, config: TrainConfig, dist: DistInfo, shuffle: bool
             ) -> BucketBatchSampler:
    tokens, frames = dataset.lengths
    d = config.data
    return BucketBatchSampler(tokens, frames, d.max_tokens, d.max_frames, max_items=d.max_items,
                              seed=config.run.seed, shuffle=shuffle, bucket_ratio=d.bucket_ratio,
                              rank=dist.rank, world_size=dist.world_size)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, config: TrainConfig, dist: DistInfo,
             reference: nn.Module | None, autocast: Callable[[], Any]) -> float:
    """Held-out loss over the loader's batches of every rank (global mean per target token;
    the loader holds the same `run.eval_batches` batches at every call: `HeldOutBatches`)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    for batch in loader:
        for reason in batch.pop("bad_items", []):
            warnings.warn(f"held-out item left out (data.on_bad_item=skip): {reason}",
                          stacklevel=2)
        if "ids" not in batch:
            continue
        batch = to_device(batch, dist.device)
        with autocast():
            loss = loss_sum(model, batch, config.objective, config.dpo.beta, reference)
        total += torch.tensor([float(loss), count_targets(batch, config.objective)],
                              dtype=torch.float64)
    total = all_reduce_sum(total, dist)
    model.train()
    return float(total[0] / max(total[1], 1))


def update_allowed(finite: bool, loss: float, grad_norm: float, state: TrainerState,
                   run: RunConfig, log: RunLog) -> bool:
    """Whether a step's update may be applied: yes when its loss (and gradient) are finite;
    else ``run.on_nonfinite`` says: ``stop`` raises before the update, ``skip`` drops it,
    counted in ``state.skipped_steps`` and logged (the lm and GRPO loops share this).

    Raises:
        TrainingError: a non-finite step under ``run.on_nonfinite: stop``.
    """
    if finite:
        return True
    if run.on_nonfinite == "stop":
        log.close()
        raise TrainingError(
            f"step {state.step + 1}: the loss is {loss} (gradient norm {grad_norm}); stopped "
            f"before the update, the weights are those of step {state.step}. Lower optim.lr, "
            f"check the data, or set run.on_nonfinite=skip")
    state.skipped_steps += 1
    log.write({"step": state.step + 1, "nonfinite_loss": str(loss),
               "skipped_steps": state.skipped_steps})
    return False


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Run one stage (module docstring). Launch under torchrun for several ranks.

    Args:
        config: the stage.
        resume: continue from the newest complete checkpoint under ``run.out_dir`` (a fresh
            start if there is none).

    Returns:
        The `TrainResult` (losses of this call, last validation, checkpoint and export paths).

    Raises:
        ConfigError, DataError, CheckpointError: bad config, data or checkpoints.
        TrainingError: a non-finite loss (``run.on_nonfinite: stop``) or weights.
    """
    threads, why_threads = choose_threads(config.run.threads)
    with torch_threads(threads):  # the caller's thread count comes back afterwards
        if config.objective == "grpo":  # its own loop, which builds on this module
            from lalm.training.grpo_loop import train_grpo

            return train_grpo(config, resume)
        return _train(config, resume, threads, why_threads)


def _train(config: TrainConfig, resume: bool, threads: int, why_threads: str) -> TrainResult:
    # 1. processes and randomness
    run = config.run
    dist = init_distributed(run.device)
    seed_everything(run.seed, dist.rank)
    out_dir = Path(run.out_dir)
    ckpt_root = out_dir / "checkpoints"
    if dist.main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # 2. model, data, optimiser
    tokenizer = load_stage_tokenizer(config)
    base = build_model(config, tokenizer).to(dist.device)
    reference = None
    if config.objective == "dpo":
        reference = (load_model(config.dpo.reference) if config.dpo.reference
                     else copy.deepcopy(base)).to(dist.device).eval().requires_grad_(False)
    if run.grad_checkpointing:
        enable_grad_checkpointing(base)
    n_mels = base.config.encoder.n_mels
    # data.encoder_cache: the frozen encoder's outputs, computed before FSDP shards its weights
    encoder = base.encoder if config.data.encoder_cache else None
    train_set, skipped_before = build_dataset(config.data.train, config, tokenizer, n_mels,
                                              run.seed, encoder, base.audio_row_counts)
    sampler = _sampler(train_set, config, dist, shuffle=True)
    config = config.with_steps(len(sampler))  # run.epochs: the steps of that many passes
    run = config.run
    if dist.main:
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    loader = _loader(train_set, sampler, config, tokenizer.eod_id)
    valid_loader, metric_examples = None, []
    if config.data.valid is not None:
        valid_set, _ = build_dataset([config.data.valid], config, tokenizer, n_mels, run.seed,
                                     encoder, base.audio_row_counts)
        valid_loader = _loader(valid_set, HeldOutBatches(
            _sampler(valid_set, config, dist, shuffle=False), run.eval_batches),
            config, tokenizer.eod_id)
        if config.objective == "lm":
            metric_examples = valid_set.examples[: run.metric_items]
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    total = sum(p.numel() for p in base.parameters())
    find_unused = run.find_unused_parameters
    if find_unused is None:
        find_unused = may_skip_parts(train_set, config.parts)
    model = wrap_model(base, run.strategy, dist, find_unused)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, run.max_steps)
    amp_dtype = resolve_dtype(run.precision, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=amp_dtype == torch.float16)

    def autocast() -> Any:
        if amp_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(dist.device.type, dtype=amp_dtype)

    # 3. resume (from the newest checkpoint that passes its checksums)
    state = TrainerState(skipped_items=skipped_before)
    found = resumable_checkpoint(ckpt_root, dist) if resume else None
    if found is not None:
        state, extra = load_checkpoint(found, model, optimizer, scheduler, dist, verify=False)
        if "scaler" in extra:
            scaler.load_state_dict(extra["scaler"])
    stream = BatchStream(loader, sampler, state)
    log = RunLog(out_dir, config, dist, state.step, run.max_steps)
    log.start(config, trainable, total, run.max_steps,
              f"{threads} torch thread(s) ({why_threads}); {dist.world_size} rank(s) on "
              f"{dist.device.type}" + (f"; resumed from {found}" if found is not None else ""))
    result = TrainResult(step=state.step, checkpoint=found, threads=threads,
                         trainable_params=trainable, main=dist.main)
    params = [p for p in model.parameters() if p.requires_grad]
    accum = config.optim.grad_accum
    meter = Throughput(state.step, state.tokens, state.samples)

    def save() -> Path:
        extra = {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}
        return save_checkpoint(ckpt_root, model, optimizer, scheduler, state, config.to_dict(),
                               dist, run.keep_last, extra)

    def evaluate() -> None:
        if valid_loader is None:
            return
        record: dict[str, Any] = {"step": state.step, "val_loss": validate(
            model, valid_loader, config, dist, reference, autocast)}
        if metric_examples and dist.main and not (dist.distributed and run.strategy == "fsdp"):
            # FSDP shards parameters: decoding needs every rank, so metrics run only unsharded.
            with autocast():
                record.update(task_metrics(unwrap(model), tokenizer, metric_examples,
                                           run.max_new_tokens))
        log.write(record)
        result.validation = record

    # 4-5. the steps
    while state.step < run.max_steps:
        micro = [to_device(stream.next(), dist.device) for _ in range(accum)]
        for reason in stream.bad_items:
            log.note(f"step {state.step + 1}: bad item left out: {reason}")
            log.write({"step": state.step + 1, "bad_item": reason})
        totals = all_reduce_sum(torch.tensor(
            [sum(count_targets(b, config.objective) for b in micro), len(stream.bad_items),
             sum(int(b["token_lens"].sum()) for b in micro), sum(map(count_items, micro))],
            dtype=torch.float64), dist)
        count, stream.bad_items = totals[0], []
        state.skipped_items += int(totals[1])
        state.tokens += int(totals[2])
        state.samples += int(totals[3])
        step_loss = torch.zeros((), dtype=torch.float64)
        for i, batch in enumerate(micro):
            with no_grad_sync(model, skip=i < accum - 1):
                with autocast():
                    loss = loss_sum(model, batch, config.objective, config.dpo.beta, reference)
                scaler.scale(loss * dist.world_size / count.clamp(min=1)).backward()
            step_loss += loss.detach().double().cpu()
        loss_value = float(all_reduce_sum(step_loss, dist) / count.clamp(min=1))
        scaler.unscale_(optimizer)
        grad_norm = (torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
                     if config.optim.grad_clip > 0 else torch.zeros(()))
        # fp16's scaler skips steps with inf/NaN gradients itself; a non-finite loss is never
        # an overflow it can fix
        finite = math.isfinite(loss_value) and (
            scaler.is_enabled() or math.isfinite(float(grad_norm)))
        if update_allowed(finite, loss_value, float(grad_norm), state, run, log):
            scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        result.losses.append(loss_value)
        log.advance()
        if state.step % run.log_every == 0 or state.step == run.max_steps:
            log.write({"step": state.step, "loss": loss_value,
                       "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "epoch": state.epoch, "tokens": state.tokens, "samples": state.samples,
                       **meter.rates(state.step, state.tokens, state.samples, run.max_steps)})
        if run.eval_every and state.step % run.eval_every == 0 and state.step < run.max_steps:
            evaluate()
        if run.save_every and state.step % run.save_every == 0 and state.step < run.max_steps:
            result.checkpoint = save()

    # 6. the end: throughput, validation, last checkpoint, export
    rates = meter.rates(state.step, state.tokens, state.samples, run.max_steps)
    result.tokens_per_s, result.examples_per_s = rates["tokens_per_s"], rates["samples_per_s"]
    result.step, result.skipped_steps = state.step, state.skipped_steps
    result.skipped_items = state.skipped_items
    evaluate()
    result.checkpoint = save()
    if run.export:
        export_run(model, config, out_dir, dist.main)
        result.export_dir = out_dir / "export" if dist.main else None
        barrier(dist)
    log.close()
    shutdown(dist)
    return result
