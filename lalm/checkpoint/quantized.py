"""Saved weight-only int8 checkpoints (`lalm.model.quant`): on-disk layout and config block.

A quantised checkpoint is the family's ordinary folder (config.json + safetensors) with:
- every quantised weight stored as int8 codes under its usual name (e.g.
  ``language_model.model.layers.0.self_attn.q_proj.weight``), and its scales beside it under
  the same name plus ``_scale`` (``...q_proj.weight_scale``; float, [out] or [out, groups]);
  fused families (Qwen-Audio v1 ``c_attn``) fuse the scales' rows as they fuse the weight's;
- a ``quantization_config`` block in config.json::

      {"quant_method": "lalm_int8", "bits": 8, "symmetric": true,
       "group_size": null,              # null: one scale per output channel
       "modules": ["decoder.layers.*.attn.q", ..., "decoder.lm_head"]}

  ``quant_method`` is lalm's own. Such a folder is for lalm only: transformers 5.23 merely
  warns "Unknown quantization type ... we will skip the quantization" and would read the int8
  codes as weights (checked by hand); export a float model for transformers or vLLM.

`lalm.checkpoint.load.load_model` reads such a folder back into an int8 model (the same
`Int8Linear` modules, identical logits); `save_model` writes one from a quantised model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel
from lalm.model.quant import (
    LAYER_LINEARS,
    SCALES,
    Int8Linear,
    quantize_model_int8,
)

#: The config.json block naming the quantisation.
QUANT_KEY = "quantization_config"
QUANT_METHOD = "lalm_int8"
#: Appended to a weight's on-disk name to name its scales.
SCALE_SUFFIX = "_scale"
_LAYER_PATTERNS = [f"decoder.layers.*.{name}" for name in LAYER_LINEARS]
_LM_HEAD = "decoder.lm_head"

StateDict = dict[str, Tensor]


def quantization_config(model: AudioLanguageModel) -> dict[str, Any] | None:
    """The config.json block of a quantised model; None for a float model.

    Raises:
        CheckpointError: a model quantised in a way the block cannot state (not every
            decoder-layer Linear, or mixed group sizes).
    """
    found = {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    if not found:
        return None
    head = _LM_HEAD in found
    expected = {f"decoder.layers.{i}.{name}" for i in range(len(model.decoder.layers))
                for name in LAYER_LINEARS} | ({_LM_HEAD} if head else set())
    groups = {m.group_size for m in found.values()}
    if set(found) != expected or len(groups) != 1:
        raise CheckpointError(
            "only models quantised by lalm.model.quant.quantize_model_int8 can be saved "
            f"(every decoder-layer Linear, one group size); this one has {sorted(found)[:10]} "
            f"with group sizes {sorted(groups, key=str)}")
    return {"quant_method": QUANT_METHOD, "bits": 8, "symmetric": True,
            "group_size": groups.pop(),
            "modules": [*_LAYER_PATTERNS, _LM_HEAD] if head else list(_LAYER_PATTERNS)}


def to_disk(state: StateDict, from_lalm: Callable[[StateDict], StateDict]) -> StateDict:
    """A lalm state dict (int8 weights + ``.scales``) under the format's on-disk names.

    The scales go through the format's converter in their weight's place (so renames and
    fusions apply to them row for row), then take the ``_scale`` suffix.
    """
    scale_keys = [k for k in state if k.endswith(f".{SCALES}")]
    as_weights = {_sibling(k, SCALES, "weight"): state[k] for k in scale_keys}
    rest = {k: v for k, v in state.items() if k not in set(scale_keys)}
    disk = from_lalm(rest)
    disk.update((k + SCALE_SUFFIX, v) for k, v in from_lalm(as_weights).items())
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
        The state dict under lalm's names (int8 weights + ``.scales`` where quantised).

    Raises:
        CheckpointError: an unknown or malformed ``quantization_config``; scales without the
            block; int8 codes where a float is expected or float values where int8 codes are.
    """
    block = hf_config.get(QUANT_KEY)
    scale_keys = [k for k in raw if k.endswith(f".weight{SCALE_SUFFIX}")]
    if block is None:
        if scale_keys:
            raise CheckpointError(f"{source}: weight scales {scale_keys[:3]} but no "
                                  f"{QUANT_KEY} in config.json")
        return to_lalm(raw)
    include_lm_head = _check_block(block, source)
    quantize_model_int8(model, include_lm_head=include_lm_head, group_size=block["group_size"])
    weights = {k[: -len(SCALE_SUFFIX)]: raw[k] for k in scale_keys}
    state = to_lalm({k: v for k, v in raw.items() if k not in set(scale_keys)})
    state.update((_sibling(k, "weight", SCALES), v) for k, v in to_lalm(weights).items())
    _check_codes(model, state, source)
    return state


def _check_block(block: object, source: str) -> bool:
    """Validate a ``quantization_config``; returns whether the lm_head is quantised."""
    where = f"{source}: config.json {QUANT_KEY}"
    if not isinstance(block, dict) or block.get("quant_method") != QUANT_METHOD:
        method = block.get("quant_method") if isinstance(block, dict) else block
        raise CheckpointError(f"{where}: quant_method {method!r} is not lalm's "
                              f"{QUANT_METHOD!r}")
    group = block.get("group_size")
    modules = block.get("modules")
    if block.get("bits") != 8 or block.get("symmetric") is not True:
        raise CheckpointError(f"{where}: only symmetric 8-bit is read, got bits "
                              f"{block.get('bits')!r}, symmetric {block.get('symmetric')!r}")
    if group is not None and (not isinstance(group, int) or isinstance(group, bool)
                              or group <= 0):
        raise CheckpointError(f"{where}: group_size must be null or a positive integer, "
                              f"got {group!r}")
    if modules not in (_LAYER_PATTERNS, [*_LAYER_PATTERNS, _LM_HEAD]):
        raise CheckpointError(f"{where}: modules must be {_LAYER_PATTERNS} (+ {_LM_HEAD!r}), "
                              f"got {modules!r}")
    return _LM_HEAD in modules


def _check_codes(model: AudioLanguageModel, state: StateDict, source: str) -> None:
    """int8 exactly where the quantised model has int8 buffers, float scales."""
    expected = model.state_dict()
    bad = [f"{k}: file {v.dtype} vs model {expected[k].dtype}" for k, v in state.items()
           if k in expected and (expected[k].dtype == torch.int8) != (v.dtype == torch.int8)]
    bad += [f"{k}: scales must be float, file {v.dtype}" for k, v in state.items()
            if k.endswith(f".{SCALES}") and not v.is_floating_point()]
    if bad:
        raise CheckpointError(f"{source}: quantised tensors of the wrong dtype: {bad[:10]}")


def _sibling(key: str, old: str, new: str) -> str:
    """``a.b.<old>`` -> ``a.b.<new>``."""
    return key[: -len(old)] + new
