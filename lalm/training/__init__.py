"""Training: stages as configuration, an explicit loop, LoRA (PEFT adapters), DPO, GRPO,
exact resume, torchrun.

    lalm train sft --set run.max_steps=200 [--resume]
    torchrun --nproc-per-node 2 -m lalm train pretrain

`train` and `TrainResult` are imported on first use (the loop pulls in torch.distributed's
checkpoint machinery, which configuration readers do not need).
"""

from typing import Any

from lalm.training.stages import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from lalm.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'lalm.training' has no attribute {name!r}")
