"""Optimiser and learning-rate schedule: AdamW over two parameter groups, warmup then cosine.

Weight decay applies to matrices (Linear and conv weights, LoRA factors) only: biases, norm
weights, embedding tables, positional tables and the v1 audio BOS/EOS rows are left undecayed, as
in GPT-2/nanoGPT practice (decaying a norm's gain or an embedding pulls it towards zero for no
regularising benefit).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lalm.errors import ConfigError
from lalm.training.stages import OptimConfig

# Parameter names (suffixes) that hold embedding-like tables: never decayed.
_TABLES = ("embed.weight", "positional_embedding", "audio_bos_eos")


def decays(name: str, param: nn.Parameter) -> bool:
    """True when `param` (called `name` in the model) gets weight decay: matrices that are not
    embedding tables."""
    return param.ndim >= 2 and not name.endswith(_TABLES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """The trainable parameters in two AdamW groups: decayed matrices, undecayed rest.

    Frozen parameters (``requires_grad=False``) are left out. Groups keep the model's parameter
    order, so an optimizer state saved by one process loads into another.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if decays(name, param) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` with the config's lr, betas, eps and weight decay.

    Raises:
        ConfigError: the model has no trainable parameter.
    """
    groups = param_groups(model, config.weight_decay)
    if not any(group["params"] for group in groups):
        raise ConfigError("the model has no trainable parameters")
    # foreach=False: the per-parameter update order is fixed, which keeps a resumed or
    # re-sharded run's arithmetic identical to an uninterrupted one.
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                             foreach=False)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based).

    Linear from 1/(warmup+1) up to 1 over the first `warmup_steps` steps, then a half cosine from
    1 down to `min_ratio` at `total_steps`; `min_ratio` after that.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= total_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    total_steps: int) -> LambdaLR:
    """A `LambdaLR` applying `warmup_cosine` to every group; step it once per optimizer step.
    Its `state_dict` holds the step count (the schedule itself is rebuilt from the config)."""
    return LambdaLR(optimizer, lambda step: warmup_cosine(
        step, config.warmup_steps, total_steps, config.min_lr_ratio))
