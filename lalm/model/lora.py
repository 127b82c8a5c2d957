"""LoRA (Hu et al. 2021): low-rank adapters on Linear layers, gating them, merging them back.

`LoRALinear` is an `nn.Linear` (same ``weight`` / ``bias`` parameters, so the state-dict keys of
the wrapped layer do not change) plus two factors::

    y = x W^T + b + g * (alpha / r) * dropout(x) A^T B^T      A: [r, in], B: [out, r]

B starts at zero, so a freshly adapted model computes exactly what the base model computes.
`lalm.training.lora.apply_lora` swaps the chosen Linear layers of a module for `LoRALinear`
(sharing the base parameters, which it freezes); `merge_lora` writes ``W + (alpha / r) B A``
into plain Linear layers again, so the merged model has the original architecture and key names
(ready for `lalm.checkpoint.save_model`).

The gate g is 1 unless the layer is gated (`gate_adapters`): then an `AdapterGate`, set by the
decoder around each forward, gives g per sequence (or per position of packed rows), 1 where
the adapters act and 0 where the base layer computes alone. lalm gates a decoder's adapters to
the sequences that hold audio (`AudioLanguageModel.forward`, the decode engine): text-only
conversations then run the base LLM exactly, as vLLM serves a LoRA adapter to the requests
that name it. A gated layer cannot be merged (`merge_lora` leaves it); its checkpoint keeps
the base weights and the adapter apart (`lalm.checkpoint.peft`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
        self.gate: AdapterGate | None = None  # where the update acts (`gate_adapters`)
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
        """x: [B, S, in_features] (any [..., in_features] ungated) -> same leading dims
        x [..., out_features]."""
        # a no-op cast unless the model computes wider than its weights (lalm.model.upcast)
        weight = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        base = F.linear(x, weight, bias)
        if not self.adapter_enabled or (self.gate is not None and self.gate.shut):
            return base
        return base + self.update(x)

    def update(self, x: Tensor) -> Tensor:
        """The adapters' part of the output: g (alpha / r) dropout(x) A^T B^T, [B, S, out]
        ([..., out] ungated) in x's dtype."""
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a.to(x.dtype)),
                          self.lora_b.to(x.dtype))
        if self.gate is not None:
            update = update * self.gate.factor(update)
        return self.scaling * update

    def merged_weight(self) -> Tensor:
        """W + (alpha / r) B A: [out_features, in_features], computed in fp32, model dtype."""
        delta = self.lora_b.float() @ self.lora_a.float()
        return (self.weight.float() + self.scaling * delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


class AdapterGate:
    """Where the gated adapters of a decoder act during the forward in progress (module
    docstring): one object shared by the decoder (``adapter_gate``) and its gated layers."""

    def __init__(self) -> None:
        self.mask: Tensor | None = None  # [B, 1] or [B, S] bool while a forward runs
        self.shut = False  # True: the caller knows no row is adapted (`shut_for`)

    @contextlib.contextmanager
    def shut_for(self, no_row_adapted: bool) -> Iterator[None]:
        """Within the block, with `no_row_adapted`, the gated layers skip their update (it
        would be multiplied by zero everywhere): a caller that knows every row's flag as a
        Python bool (the decode engine) saves the adapters' products without a device sync."""
        self.shut = no_row_adapted
        try:
            yield
        finally:
            self.shut = False

    @contextlib.contextmanager
    def acting_on(self, mask: Tensor) -> Iterator[None]:
        """Within the block the adapters act on ``mask``: [B] bool per sequence, or [B, S]
        per position (packed rows)."""
        self.mask = mask[:, None] if mask.dim() == 1 else mask
        try:
            yield
        finally:
            self.mask = None

    def factor(self, update: Tensor) -> Tensor:
        """[B, 1 or S, 1] 0/1 factor in ``update``'s dtype for a [B, S, out] update.

        Raises:
            ValueError: no forward set the gate (a caller that did not say where the adapters
                act), or an update that is not [B, S, out] for the gate's B.
        """
        mask = self.mask
        if mask is None:
            raise ValueError("these LoRA adapters are gated: run them through the decoder's "
                             "forward with adapter_mask (which sequences they act on)")
        if update.dim() != 3 or update.shape[0] != mask.shape[0] \
                or mask.shape[1] not in (1, update.shape[1]):
            raise ValueError(f"a gated adapter's update {tuple(update.shape)} does not fit "
                             f"the gate {tuple(mask.shape)}")
        return mask[..., None].to(update.dtype)


def gate_adapters(decoder: nn.Module) -> AdapterGate:
    """Gate every `LoRALinear` of the decoder's blocks (``decoder.layers``) with one new
    `AdapterGate`, kept as ``decoder.adapter_gate`` and each block's ``adapter_gate`` (a block
    sets it around its own forward); the decoder's forward then needs ``adapter_mask``.

    Raises:
        ValueError: no adapted layer in the blocks, or one outside them (the lm_head runs on
            rows the gate does not follow).
    """
    inside = {id(m) for m in decoder.layers.modules()}  # type: ignore[union-attr]
    layers = [m for m in decoder.modules() if isinstance(m, LoRALinear)]
    if not layers or any(id(m) not in inside for m in layers):
        raise ValueError("gated adapters need LoRA layers in the decoder blocks, and only "
                         "there")
    gate = AdapterGate()
    for layer in layers:
        layer.gate = gate
    for block in decoder.layers:  # type: ignore[union-attr]
        block.adapter_gate = gate
    decoder.adapter_gate = gate
    return gate


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


@torch.no_grad()
def merge_lora(module: nn.Module) -> int:
    """Fold every ungated `LoRALinear` under `module` into a plain `nn.Linear`, in place
    (gated ones stay: their update is not the same for every sequence).

    The merged layer keeps the parameter names (``weight``, ``bias``) and the trainability of
    the base weight it replaces (frozen, as the adapted base was).

    Returns:
        The number of layers merged.
    """
    count = 0
    for name, child in list(module.named_modules()):
        if not isinstance(child, LoRALinear) or child.gate is not None:
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
