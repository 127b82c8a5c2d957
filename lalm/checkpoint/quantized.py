"""Saved weight-only int8 / int4 checkpoints (`lalm.model.quant`): on-disk layout and config
block.

A quantised checkpoint is the family's ordinary folder (config.json + safetensors) with:
- every quantised weight stored as its codes under its usual name (e.g.
  ``language_model.model.layers.0.self_attn.q_proj.weight``): int8 [out, in] for int8, uint8
  [out, in / 2] for int4 (two 0..15 codes per byte, even input column in the low nibble);
- its scales beside it under the same name plus ``_scale`` (``...q_proj.weight_scale``;
  float, [out] or [out, groups]), and for int4 its zeros plus ``_zero`` (float, [out,
  groups]; the weight is ``(q - 8) * scale + zero`` over each group of input columns);
  fused families (Qwen-Audio v1 ``c_attn``) fuse these rows as they fuse the weight's;
- a ``quantization_config`` block in config.json::

      {"quant_method": "lalm_int8", "bits": 8, "symmetric": true,
       "group_size": null,              # null: one scale per output channel
       "modules": ["decoder.layers.*.attn.q", ..., "decoder.lm_head"]}

      {"quant_method": "lalm_int4", "bits": 4, "symmetric": false,
       "group_size": 32,                # input columns per scale and zero (a layer
                                        # whose width it does not divide: the largest
                                        # divisor below, `int4_group_size`)
       "modules": [...as above],
       "lm_head": {"quant_method": "lalm_int8", "bits": 8, "symmetric": true,
                   "group_size": null}}

  ``lm_head`` is there only when the head is in the other scheme (at that scheme's default
  group size; `precision="int4"` keeps the head int8: `lalm.model.quant.HEAD_SCHEMES`);
  without it a listed ``decoder.lm_head`` is in the layers' scheme and group size.

  ``quant_method`` is lalm's own. Such a folder is for lalm only: transformers 5.23 merely
  warns "Unknown quantization type ... we will skip the quantization" and would read the
  codes as weights (checked by hand for int8); export a float model for transformers or vLLM.

`lalm.checkpoint.load.load_model` reads such a folder back into a quantised model (the same
`Int8Linear` / `Int4Linear` modules, identical logits); `save_model` writes one from a
quantised model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel
from lalm.model.quant import (
    DEFAULT_GROUP_SIZES,
    LAYER_LINEARS,
    SCALES,
    SCHEMES,
    ZEROS,
    QuantizedLinear,
    quantize_model,
)

#: The config.json block naming the quantisation.
QUANT_KEY = "quantization_config"
#: ``quant_method`` of each scheme, and the reverse.
QUANT_METHODS = {scheme: f"lalm_{scheme}" for scheme in SCHEMES}
_SCHEME_OF = {method: scheme for scheme, method in QUANT_METHODS.items()}
#: Appended to a weight's on-disk name to name its scales / zeros.
SCALE_SUFFIX, ZERO_SUFFIX = "_scale", "_zero"
#: Each extra buffer of a quantised Linear (lalm's name -> on-disk suffix of the weight's name).
_AUX = {SCALES: SCALE_SUFFIX, ZEROS: ZERO_SUFFIX}
_LAYER_PATTERNS = [f"decoder.layers.*.{name}" for name in LAYER_LINEARS]
_LM_HEAD = "decoder.lm_head"

StateDict = dict[str, Tensor]


def quantization_config(model: AudioLanguageModel) -> dict[str, Any] | None:
    """The config.json block of a quantised model; None for a float model.

    Raises:
        CheckpointError: a model quantised in a way the block cannot state (not every
            decoder-layer Linear, mixed schemes or group sizes among them, a head in another
            scheme with a group size other than that scheme's default).
    """
    found = {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not found:
        return None
    head = found.pop(_LM_HEAD, None)
    expected = {f"decoder.layers.{i}.{name}" for i in range(len(model.decoder.layers))
                for name in LAYER_LINEARS}
    kinds = {_kind(m) for m in found.values()}
    if set(found) != expected or len(kinds) != 1:
        raise CheckpointError(
            "only models quantised by lalm.model.quant.quantize_model can be saved (every "
            f"decoder-layer Linear, one scheme, one group size); this one has "
            f"{sorted(found)[:10]} in (scheme, group size) {sorted(kinds, key=str)}")
    scheme, group = kinds.pop()
    block = {**_scheme_block(scheme, group),
             "modules": [*_LAYER_PATTERNS, _LM_HEAD] if head else list(_LAYER_PATTERNS)}
    if head is not None and _kind(head) != (scheme, group):
        head_scheme, head_group = _kind(head)
        if head_scheme == scheme or head_group != DEFAULT_GROUP_SIZES[head_scheme]:
            raise CheckpointError(f"the lm_head ({head_scheme}, group size {head_group}) can "
                                  f"only be saved in the layers' scheme or in another at its "
                                  "default group size")
        block["lm_head"] = _scheme_block(head_scheme, head_group)
    return block


def _kind(module: QuantizedLinear) -> tuple[str, int | None]:
    """(scheme, group size asked for: an int4 layer narrower than it uses a divisor)."""
    return f"int{module.bits}", getattr(module, "max_group_size", module.group_size)


def _scheme_block(scheme: str, group: int | None) -> dict[str, Any]:
    return {"quant_method": QUANT_METHODS[scheme], "bits": SCHEMES[scheme].bits,
            "symmetric": scheme == "int8", "group_size": group}


def to_disk(state: StateDict, from_lalm: Callable[[StateDict], StateDict]) -> StateDict:
    """A lalm state dict (codes + ``.scales``, int4 also ``.zeros``) under the format's
    on-disk names.

    Scales and zeros go through the format's converter in their weight's place (so renames
    and fusions apply to them row for row), then take the ``_scale`` / ``_zero`` suffix.
    """
    aux = {name: [k for k in state if k.endswith(f".{name}")] for name in _AUX}
    taken = {k for keys in aux.values() for k in keys}
    disk = from_lalm({k: v for k, v in state.items() if k not in taken})
    for name, keys in aux.items():
        as_weights = {_sibling(k, name, "weight"): state[k] for k in keys}
        disk.update((k + _AUX[name], v) for k, v in from_lalm(as_weights).items())
    return disk


def from_disk(model: AudioLanguageModel, raw: StateDict, hf_config: dict[str, Any],
              to_lalm: Callable[[StateDict], StateDict], source: str) -> StateDict:
    """The lalm state dict of a checkpoint, quantising the (meta) model first if the folder
    is a quantised checkpoint (`load_model` calls this once; a float folder is renamed only).

    Args:
        model: the freshly built model (meta device) the state will be assigned to.
        raw: the folder's tensors under their on-disk names.
        hf_config: its parsed config.json.
        to_lalm: the format's renamer.
        source: the folder, for error messages.

    Returns:
        The state dict under lalm's names (codes + ``.scales`` (+ ``.zeros``) where
        quantised).

    Raises:
        CheckpointError: an unknown or malformed ``quantization_config``; scales or zeros
            without the block; codes where a float is expected or float values where codes
            are.
    """
    block = hf_config.get(QUANT_KEY)
    aux = {name: [k for k in raw if k.endswith(f".weight{suffix}")]
           for name, suffix in _AUX.items()}
    taken = {k for keys in aux.values() for k in keys}
    if block is None:
        if taken:
            raise CheckpointError(f"{source}: weight scales/zeros {sorted(taken)[:3]} but no "
                                  f"{QUANT_KEY} in config.json")
        return to_lalm(raw)
    scheme, head = _check_block(block, source)
    quantize_model(model, scheme, lm_head=head, group_size=block["group_size"])
    state = to_lalm({k: v for k, v in raw.items() if k not in taken})
    for name, keys in aux.items():
        weights = {k[: -len(_AUX[name])]: raw[k] for k in keys}
        state.update((_sibling(k, "weight", name), v) for k, v in to_lalm(weights).items())
    _check_codes(model, state, source)
    return state


def _check_block(block: object, source: str) -> tuple[str, str | None]:
    """Validate a ``quantization_config``; returns the layers' scheme ("int8" | "int4") and
    the lm_head's (None: float). Without an ``lm_head`` sub-block a listed head is in the
    layers' scheme and group size."""
    where = f"{source}: config.json {QUANT_KEY}"
    scheme = _check_scheme(block, where)
    modules = block.get("modules")  # type: ignore[union-attr]  # a dict: checked
    if modules not in (_LAYER_PATTERNS, [*_LAYER_PATTERNS, _LM_HEAD]):
        raise CheckpointError(f"{where}: modules must be {_LAYER_PATTERNS} (+ {_LM_HEAD!r}), "
                              f"got {modules!r}")
    sub = block.get("lm_head")  # type: ignore[union-attr]
    if _LM_HEAD not in modules:
        if sub is not None:
            raise CheckpointError(f"{where}: an lm_head block but {_LM_HEAD!r} not in modules")
        return scheme, None
    if sub is None:
        return scheme, scheme
    head = _check_scheme(sub, f"{where} lm_head")
    if head == scheme or sub["group_size"] != DEFAULT_GROUP_SIZES[head]:
        raise CheckpointError(f"{where}: an lm_head block must name the other scheme at its "
                              f"default group size {DEFAULT_GROUP_SIZES[head]!r}, got {sub!r}")
    return scheme, head


def _check_scheme(block: object, where: str) -> str:
    """Validate one scheme's fields (quant_method, bits, symmetric, group_size); its name."""
    method = block.get("quant_method") if isinstance(block, dict) else block
    if not isinstance(block, dict) or method not in _SCHEME_OF:
        raise CheckpointError(f"{where}: quant_method {method!r} is not one of lalm's "
                              f"{sorted(_SCHEME_OF)}")
    scheme = _SCHEME_OF[method]
    group = block.get("group_size")
    bits, symmetric = SCHEMES[scheme].bits, scheme == "int8"
    if block.get("bits") != bits or block.get("symmetric") is not symmetric:
        raise CheckpointError(f"{where}: {method} is {bits}-bit with symmetric "
                              f"{str(symmetric).lower()}, got bits {block.get('bits')!r}, "
                              f"symmetric {block.get('symmetric')!r}")
    if (group is not None or scheme == "int4") and (
            not isinstance(group, int) or isinstance(group, bool) or group <= 0):
        raise CheckpointError(f"{where}: group_size must be "
                              f"{'a' if scheme == 'int4' else 'null or a'} positive integer, "
                              f"got {group!r}")
    return scheme


def _check_codes(model: AudioLanguageModel, state: StateDict, source: str) -> None:
    """Codes (int8 / uint8) exactly where the quantised model has them, float scales/zeros."""
    expected = model.state_dict()
    codes = (torch.int8, torch.uint8)
    bad = [f"{k}: file {v.dtype} vs model {expected[k].dtype}" for k, v in state.items()
           if k in expected and (expected[k].dtype in codes or v.dtype in codes)
           and v.dtype != expected[k].dtype]
    bad += [f"{k}: {name} must be float, file {v.dtype}" for k, v in state.items()
            for name in _AUX if k.endswith(f".{name}") and not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"{source}: quantised tensors of the wrong dtype: {bad[:10]}")


def _sibling(key: str, old: str, new: str) -> str:
    """``a.b.<old>`` -> ``a.b.<new>``."""
    return key[: -len(old)] + new
