"""Full training state on disk: model, optimizer, scheduler, data position and every RNG.

Layout under a run's ``checkpoints/`` folder::

    step-00000120/
        model.pt          full (unsharded) model state dict, parameter names as in lalm's model
        optimizer.pt      full optimizer state keyed by parameter name (any world size reloads it)
        trainer.json      step, scheduler state, data position (epoch, batches consumed), config
        rng-rank{r}.json  Python, NumPy, torch CPU (and CUDA) generator states of rank r
        manifest.json     size and sha256 of every file above, written last

Nothing in a checkpoint can run code when it is read: the two ``.pt`` files hold only tensors
and plain containers and load with ``torch.load(weights_only=True)``; the rest is JSON. Loading
checks every file against ``manifest.json`` first, so overwritten or truncated bytes are found
before they reach the model; `resumable_checkpoint` then falls back to the newest intact
checkpoint (with a warning). A checkpoint whose weights are not all finite is never written.

A checkpoint is written into ``.step-00000120.tmp`` and renamed when complete, so a folder named
``step-*`` is always whole: a process killed while saving leaves only a ``.tmp`` folder, which
the next save of that step replaces and `list_checkpoints` never returns. Model and optimizer
states go through `torch.distributed.checkpoint.state_dict`, which gathers DDP and FSDP2 models
into full, name-keyed dicts (and works without a process group too).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import shutil
import warnings
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

from lalm.errors import CheckpointError, TrainingError
from lalm.training.distributed import DistInfo, all_reduce_sum, barrier

_STEP_DIR = re.compile(r"^step-(\d{8})$")
MANIFEST = "manifest.json"
_FORMAT = "lalm-train-checkpoint/2"


@dataclass
class TrainerState:
    """The loop's own counters.

    Attributes:
        step: optimizer steps done.
        epoch: data epoch in progress.
        consumed: micro-batches of `epoch` this rank has consumed.
        skipped_steps: steps whose update was dropped for a non-finite loss
            (``run.on_nonfinite: skip``).
        skipped_items: bad data items left out (``data.on_bad_item: skip``).
        tokens, samples: tokens and items trained on so far, every rank's (GRPO: of the
            answer rows).
    """

    step: int = 0
    epoch: int = 0
    consumed: int = 0
    skipped_steps: int = 0
    skipped_items: int = 0
    tokens: int = 0
    samples: int = 0


def rng_state() -> dict[str, Any]:
    """Every generator the loop draws from (Python, NumPy, torch CPU and CUDA), as JSON-ready
    lists and numbers."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(words), gauss],
        "numpy": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by `rng_state`.

    Raises:
        CheckpointError: a state of the wrong shape.
    """
    try:
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words), gauss))
        n = state["numpy"]
        np.random.set_state(("MT19937", np.array(n["keys"], dtype=np.uint32), n["pos"],
                             n["has_gauss"], n["cached_gaussian"]))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8)
                                          for s in state["cuda"]])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"malformed RNG state: {e}") from e


def step_dir(root: str | Path, step: int) -> Path:
    """The folder of the checkpoint after `step` optimizer steps."""
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root`, oldest first (not yet verified:
    `verify_checkpoint`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e


def read_trainer(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``trainer.json``: step, scheduler, data position, world size, stage config.

    Raises:
        CheckpointError: the file is not readable JSON or not an object.
    """
    trainer = _read_json(Path(path) / "trainer.json")
    if not isinstance(trainer, dict) or not isinstance(trainer.get("config"), dict):
        raise CheckpointError(f"{path}/trainer.json holds no trainer state with its config")
    return trainer


def _all_finite(state: dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


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
        extra: more state of the loop as JSON-ready values (e.g. the fp16 gradient scaler's),
            returned by `load_checkpoint`.

    Returns:
        The checkpoint folder.

    Raises:
        TrainingError: a weight is NaN or infinite (nothing is written).
    """
    final = step_dir(root, state.step)
    tmp = final.with_name(f".{final.name}.tmp")
    # Every rank joins the gather (FSDP needs all of them); rank 0 receives the full dicts.
    model_state, optim_state = get_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    bad = torch.tensor(float(dist.rank == 0 and not _all_finite(model_state)))
    if float(all_reduce_sum(bad, dist)):
        raise TrainingError(f"step {state.step}: the model's weights are no longer finite "
                            f"(NaN/inf); not saving a checkpoint of them")
    if dist.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(dist)
    _write_json(tmp / f"rng-rank{dist.rank}.json", rng_state())
    if dist.rank == 0:
        torch.save(model_state, tmp / "model.pt")
        torch.save(optim_state, tmp / "optimizer.pt")
        _write_json(tmp / "trainer.json", {
            "trainer": vars(state).copy(), "scheduler": scheduler.state_dict(),
            "world_size": dist.world_size, "config": config, "extra": extra or {}})
    barrier(dist)
    if dist.rank == 0:
        files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(tmp.iterdir())}
        _write_json(tmp / MANIFEST, {"format": _FORMAT, "step": state.step, "files": files})
        shutil.rmtree(final, ignore_errors=True)  # a checkpoint of this step from an earlier try
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    barrier(dist)
    return final


def verify_checkpoint(path: str | Path) -> None:
    """Check a checkpoint's files against its manifest (sizes and sha256) before reading any.

    Raises:
        CheckpointError: no manifest (a checkpoint of an older lalm: its pickles are not read),
            a listed file missing, truncated or changed, or model/optimizer/trainer unlisted.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST} (an incomplete checkpoint, or "
                              f"one of an older lalm whose pickled files are not read)")
    manifest = _read_json(path / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != _FORMAT:
        raise CheckpointError(f"{path / MANIFEST} is not a {_FORMAT} manifest")
    unlisted = [name for name in ("model.pt", "optimizer.pt", "trainer.json")
                if name not in files]
    if unlisted:
        raise CheckpointError(f"checkpoint {path}: its manifest does not list {unlisted}")
    for name, want in files.items():
        file = path / name
        if Path(name).name != name or name.startswith(".") or not isinstance(want, dict):
            raise CheckpointError(f"{path / MANIFEST}: bad entry {name!r}")
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        if file.stat().st_size != want.get("bytes"):
            raise CheckpointError(f"checkpoint {path}: {name} has {file.stat().st_size} bytes, "
                                  f"the manifest says {want.get('bytes')} (truncated?)")
        if sha256_file(file) != want.get("sha256"):
            raise CheckpointError(f"checkpoint {path}: {name} does not match its sha256 in the "
                                  f"manifest (corrupted)")


def resumable_checkpoint(root: str | Path, dist: DistInfo) -> Path | None:
    """The newest checkpoint under `root` that passes `verify_checkpoint`, or None when there is
    none at all. A newer one that fails is skipped with a warning. Rank 0 verifies; every rank
    gets its choice.

    Raises:
        CheckpointError: there are checkpoints but none is intact (each one's reason listed).
    """
    found = list_checkpoints(root)
    if not found:
        return None
    choice, reasons = -1, []
    if dist.rank == 0:
        for index in range(len(found) - 1, -1, -1):
            try:
                verify_checkpoint(found[index])
            except CheckpointError as e:
                reasons.append(str(e))
                continue
            choice = index
            break
        for reason in reasons if choice >= 0 else []:
            warnings.warn(f"{reason}; resuming from the older {found[choice].name} instead",
                          stacklevel=2)
    choice = int(all_reduce_sum(torch.tensor(choice + 1 if dist.rank == 0 else 0), dist)) - 1
    if choice < 0:
        detail = "; ".join(reasons) or "see rank 0's error"
        raise CheckpointError(f"no intact checkpoint under {root} to resume from: {detail}")
    return found[choice]


def _load_tensors(path: Path, **kwargs: Any) -> Any:
    """`torch.load` with ``weights_only=True``: tensors and plain containers only, no code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is not a plain tensor file (lalm reads checkpoints with "
                              f"weights_only=True and runs no code from them): {e}") from e


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, dist: DistInfo,
                    verify: bool = True) -> tuple[TrainerState, dict[str, Any]]:
    """Restore a checkpoint written by `save_checkpoint` into the live objects; returns the
    loop's counters and the `extra` state. Every rank calls it and reads the full files.

    Args:
        path: the checkpoint folder.
        model, optimizer, scheduler: the live objects (states loaded in place).
        dist: this process's place in the job.
        verify: check the files against the manifest first (`verify_checkpoint`; False when
            `resumable_checkpoint` has just done so).

    Raises:
        CheckpointError: a missing, changed or unsafe file, a different world size (the data
            position is per rank), or a model/optimizer that does not fit.
    """
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    trainer = read_trainer(path)
    if trainer.get("world_size") != dist.world_size:
        raise CheckpointError(f"checkpoint {path} was written by {trainer.get('world_size')} "
                              f"ranks; resume it with the same number (this job has "
                              f"{dist.world_size})")
    rng_file = path / f"rng-rank{dist.rank}.json"
    if rng_file.name not in _read_json(path / MANIFEST)["files"]:
        raise CheckpointError(f"checkpoint {path} has no RNG state of rank {dist.rank}")
    model_state = _load_tensors(path / "model.pt", mmap=True)
    optim_state = _load_tensors(path / "optimizer.pt")
    try:
        set_state_dict(model, optimizer, model_state_dict=model_state,
                       optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        scheduler.load_state_dict(trainer["scheduler"])
        counters = TrainerState(**trainer["trainer"])
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model/optimizer: {e}") from e
    set_rng_state(_read_json(rng_file))
    return counters, trainer.get("extra", {})
