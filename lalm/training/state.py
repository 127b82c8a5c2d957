"""Full training state on disk: model, optimizer, scheduler, data position and every RNG.

Layout under a run's ``checkpoints/`` folder::

    step-00000120/
        model.pt        full (unsharded) model state dict, parameter names as in lalm's model
        optimizer.pt    full optimizer state keyed by parameter name (any world size reloads it)
        trainer.pt      step, scheduler state, data position (epoch, batches consumed), config
        rng-rank{r}.pt  Python, NumPy, torch CPU (and CUDA) generator states of rank r

A checkpoint is written into ``.step-00000120.tmp`` and renamed when complete, so a folder named
``step-*`` is always whole: a process killed while saving leaves only a ``.tmp`` folder, which
the next save of that step replaces and `latest_checkpoint` never returns. Model and optimizer
states go through `torch.distributed.checkpoint.state_dict`, which gathers DDP and FSDP2 models
into full, name-keyed dicts (and works without a process group too).
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)

from lalm.errors import CheckpointError
from lalm.training.distributed import DistInfo, barrier

_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass
class TrainerState:
    """The loop's own counters.

    Attributes:
        step: optimizer steps done.
        epoch: data epoch in progress.
        consumed: micro-batches of `epoch` this rank has consumed.
    """

    step: int = 0
    epoch: int = 0
    consumed: int = 0


def rng_state() -> dict[str, Any]:
    """Every generator the loop draws from: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(root: str | Path, step: int) -> Path:
    """The folder of the checkpoint after `step` optimizer steps."""
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, state: TrainerState,
                    config: dict[str, Any], dist: DistInfo, keep_last: int = 2,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a complete checkpoint atomically (module docstring); every rank must call it.

    Args:
        root: the run's checkpoints folder (shared by all ranks).
        model: the (possibly DDP / FSDP-wrapped) model.
        optimizer, scheduler: their states are saved by parameter name.
        state: the loop's counters after the step.
        config: the run's config as a plain dict (stored for inspection).
        dist: this process's place in the job.
        keep_last: complete checkpoints kept; older ones are removed after the rename.
        extra: more state of the loop (e.g. the fp16 gradient scaler), returned by
            `load_checkpoint`.

    Returns:
        The checkpoint folder.
    """
    final = step_dir(root, state.step)
    tmp = final.with_name(f".{final.name}.tmp")
    # Every rank joins the gather (FSDP needs all of them); rank 0 receives the full dicts.
    model_state, optim_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    torch.save(rng_state(), tmp / f"rng-rank{dist.rank}.pt")
    if dist.rank == 0:
        torch.save(model_state, tmp / "model.pt")
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save({"trainer": vars(state).copy(), "scheduler": scheduler.state_dict(),
                    "world_size": dist.world_size, "config": config,
                    "extra": extra or {}}, tmp / "trainer.pt")
    barrier(dist)
    if dist.rank == 0:
        shutil.rmtree(final, ignore_errors=True)  # a checkpoint of this step from an earlier try
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    barrier(dist)
    return final


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler,
                    dist: DistInfo) -> tuple[TrainerState, dict[str, Any]]:
    """Restore a checkpoint written by `save_checkpoint` into the live objects; returns the
    loop's counters and the `extra` state. Every rank calls it and reads the full files.

    Raises:
        CheckpointError: a missing file, a different world size (the data position is per
            rank), or a model/optimizer that does not fit.
    """
    path = Path(path)
    files = [path / "model.pt", path / "optimizer.pt", path / "trainer.pt",
             path / f"rng-rank{dist.rank}.pt"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
    trainer = torch.load(files[2], weights_only=False)
    if trainer["world_size"] != dist.world_size:
        raise CheckpointError(f"checkpoint {path} was written by {trainer['world_size']} ranks; "
                              f"resume it with the same number (this job has {dist.world_size})")
    model_state = torch.load(files[0], map_location="cpu", weights_only=True, mmap=True)
    optim_state = torch.load(files[1], map_location="cpu", weights_only=False)
    try:
        set_state_dict(model, optimizer, model_state_dict=model_state,
                       optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {e}") from e
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(torch.load(files[3], weights_only=False))
    return TrainerState(**trainer["trainer"]), trainer["extra"]
