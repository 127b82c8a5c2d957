"""Scale-out through torch.distributed only: torchrun, DDP and FSDP2 (gloo on CPU, NCCL on GPU).

    torchrun --nproc-per-node 2 -m lalm train sft

`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, the
rendezvous address) and joins the process group; without it the job is one process.
`wrap_model` applies the run's strategy:

* ``ddp``: `DistributedDataParallel` (gradients all-reduced and averaged in backward);
* ``fsdp``: FSDP2 `fully_shard` on every encoder block and decoder layer, then on the root
  (parameters, gradients and optimizer state sharded; gathered per block when needed).

Both average gradients over ranks, so the loop scales each rank's loss by the world size to get
the gradient of the global batch's loss (see `lalm.training.loop`). DeepSpeed is not wrapped:
run it through its own launcher with lalm's model and loop if ZeRO offload is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: where this rank's model and batches go.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - immutable

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on rank 0 (the process that logs, evaluates and exports)."""
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group if there is one.

    Args:
        device: "auto" (CUDA if available), "cpu" or "cuda".

    Returns:
        The rank, world size and this rank's device. Backend: NCCL on CUDA, gloo on CPU.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank,
                    torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops on `n` threads inside the block (the old count is restored)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """How many torch CPU threads this process should run, and why (for the run's log).

    CPU training slows down badly when threads outnumber the idle cores (measured on 2 loaded
    cores: 94 tokens/s with torch's default threads, 1,073 with one). So the automatic choice
    is the CPUs this process may run on (``os.sched_getaffinity``), less the other work on the
    machine (the 1-minute load average), shared among this machine's ranks
    (``LOCAL_WORLD_SIZE``), never more than torch's own default (``OMP_NUM_THREADS`` or the
    physical cores), and at least 1.

    Args:
        requested: ``run.threads``; None for the automatic choice.

    Returns:
        (threads, a short reason).
    """
    if requested is not None:
        return requested, "run.threads"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    idle = round(cpus - load)
    threads = max(1, min(torch.get_num_threads(), cpus // ranks, idle // ranks))
    return threads, (f"auto: {cpus} CPUs, load {load:.1f}, {ranks} rank(s) here, torch default "
                     f"{torch.get_num_threads()}; run.threads=N to choose")


def shutdown(dist: DistInfo) -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.distributed:
        torch_dist.barrier()


def all_reduce_sum(value: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """The sum of `value` over ranks (a new tensor; the input itself in a single process)."""
    if not dist.distributed:
        return value
    out = value.clone()
    torch_dist.all_reduce(out)
    return out


def wrap_model(model: nn.Module, strategy: str, dist: DistInfo,
               find_unused: bool = False) -> nn.Module:
    """Wrap `model` for data-parallel training; returned unchanged in a single process.

    Args:
        model: an `AudioLanguageModel` on `dist.device`, trainable parts already chosen.
        strategy: "ddp" or "fsdp".
        dist: this process's place in the job.
        find_unused: DDP only: search each backward's graph for trainable parameters the batch
            did not use (the encoder and projector on a text-only batch). Needed then, a cost
            otherwise (`lalm.training.build.may_skip_parts`).
    """
    if not dist.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in [*model.encoder.blocks, *model.decoder.layers]:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dist.local_rank] if
                                   dist.device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> nn.Module:
    """The `AudioLanguageModel` inside a DDP wrapper (FSDP2 keeps the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@contextmanager
def no_grad_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Within: accumulate gradients locally without the cross-rank reduction (`skip` True, for
    all but the last micro-batch of a step)."""
    if not skip:
        yield
        return
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    set_sync = getattr(model, "set_requires_gradient_sync", None)  # FSDP2 modules
    if set_sync is None:
        yield
        return
    set_sync(False)
    try:
        yield
    finally:
        set_sync(True)
