"""LoRA (Hu et al. 2021): low-rank adapters on Linear layers, and merging them back.

`LoRALinear` is an `nn.Linear` (same ``weight`` / ``bias`` parameters, so the state-dict keys of
the wrapped layer do not change) plus two factors::

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T      A: [r, in], B: [out, r]

B starts at zero, so a freshly adapted model computes exactly what the base model computes.
`apply_lora` swaps the chosen Linear layers of a module for `LoRALinear` (sharing the base
parameters, which it freezes); `merge_lora` writes ``W + (alpha / r) B A`` into plain Linear
layers again, so the merged model has the original architecture and key names (ready for
`lalm.checkpoint.save_model`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lalm.errors import ConfigError
from lalm.training.stages import LoraConfig


class LoRALinear(nn.Linear):
    """A Linear layer with a trainable low-rank update (module docstring).

    Attributes:
        lora_a: [r, in_features] parameter, Kaiming-uniform init.
        lora_b: [out_features, r] parameter, zero init.
        scaling: alpha / r.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int,
                 alpha: float, dropout: float = 0.0, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapter_enabled = True  # False: the base layer alone (`adapters_disabled`)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: float,
                    dropout: float = 0.0) -> LoRALinear:
        """Adapt `linear`: the new layer shares its weight and bias (frozen), adapters fresh."""
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, rank,
                    alpha, dropout, device=weight.device, dtype=weight.dtype)
        layer.weight = weight
        layer.bias = linear.bias
        layer.weight.requires_grad_(False)
        if layer.bias is not None:
            layer.bias.requires_grad_(False)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_features] -> [..., out_features]."""
        if not self.adapter_enabled:
            return F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged_weight(self) -> Tensor:
        """W + (alpha / r) B A: [out_features, in_features], computed in fp32, model dtype."""
        delta = self.lora_b.float() @ self.lora_a.float()
        return (self.weight.float() + self.scaling * delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[None]:
    """Within the block, every `LoRALinear` under `module` computes its base layer alone: the
    starting model, e.g. the free KL reference of a LoRA stage."""
    layers = [m for m in module.modules() if isinstance(m, LoRALinear)]
    for layer in layers:
        layer.adapter_enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.adapter_enabled = True


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


@torch.no_grad()
def merge_lora(module: nn.Module) -> int:
    """Fold every `LoRALinear` under `module` into a plain `nn.Linear`, in place.

    The merged layer keeps the parameter names (``weight``, ``bias``) and the trainability of
    the base weight it replaces (frozen, as the adapted base was).

    Returns:
        The number of layers merged.
    """
    count = 0
    for name, child in list(module.named_modules()):
        if not isinstance(child, LoRALinear):
            continue
        weight = child.merged_weight()  # an int8 base (lalm.training.qlora) merges to float
        merged = nn.Linear(child.in_features, child.out_features, child.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        merged.weight.copy_(weight)
        if child.bias is not None:
            merged.bias.copy_(child.bias)
        merged.requires_grad_(False)
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, merged)
        count += 1
    return count
