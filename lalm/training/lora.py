"""Putting LoRA adapters on a model's Linear layers by a stage's `LoraConfig` (the layers
themselves, their gate and merging: `lalm.model.lora`)."""

from __future__ import annotations

from torch import nn

from lalm.errors import ConfigError
from lalm.model.lora import LoRALinear
from lalm.training.stages import LoraConfig


def _targeted(name: str, targets: tuple[str, ...]) -> bool:
    return not targets or any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(module: nn.Module, config: LoraConfig, prefix: str = "") -> list[str]:
    """Replace the targeted Linear layers under `module` with `LoRALinear` adapters, in place.

    Args:
        module: e.g. ``model.decoder``; its other parameters are left as they are.
        config: rank, alpha, dropout and target name suffixes (empty: every Linear).
        prefix: `module`'s own name, prepended to the names matched against the targets and
            to the returned names (``"decoder"`` makes ``attn.q`` match
            ``decoder.layers.0.attn.q``).

    Returns:
        The qualified names of the adapted layers.

    Raises:
        ConfigError: no Linear layer matched.
    """
    adapted = []
    for name, child in list(module.named_modules()):
        if type(child) is not nn.Linear:
            continue
        full = f"{prefix}.{name}" if prefix else name
        if not _targeted(full, config.targets):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, LoRALinear.from_linear(child, config.rank, config.alpha,
                                                     config.dropout))
        adapted.append(full)
    if not adapted:
        raise ConfigError(f"LoRA targets {list(config.targets)} match no Linear layer under "
                         f"{prefix or 'the module'}")
    return adapted
