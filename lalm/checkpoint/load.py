"""Load a checkpoint directory as published (config.json + weights) into lalm's model.

The family (Qwen2-Audio, Qwen-Audio v1, ...) is recognised from config.json by
`lalm.checkpoint.formats.detect_format`; weights are safetensors (single or sharded) or PyTorch
`.bin` shards (`lalm.checkpoint.safetensors_io.read_checkpoint_dir`).

No transformers needed: the model is built on the meta device (no memory, no init), the weights
are memory-mapped, renamed by the family's key map, assigned (`load_state_dict(assign=True)`)
and cast once to the requested dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lalm.checkpoint.formats import CheckpointFormat, detect_format
from lalm.checkpoint.hf_json import read_json
from lalm.checkpoint.quantized import from_disk
from lalm.checkpoint.safetensors_io import read_checkpoint_dir
from lalm.config import ModelConfig, resolve_dtype
from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel

CONFIG_FILE = "config.json"


def read_hf_config(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint directory.

    Raises:
        CheckpointError: the directory or its config.json is missing, not UTF-8 JSON, nested
            too deeply, or not a JSON object.
    """
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint directory needs its config")
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def load_config(directory: str | Path) -> tuple[ModelConfig, CheckpointFormat]:
    """The lalm config of a checkpoint directory and the format it was recognised as."""
    source = str(Path(directory) / CONFIG_FILE)
    hf_config = read_hf_config(directory)
    fmt = detect_format(hf_config, source)
    return fmt.config_from_hf(hf_config, source), fmt


def check_state_dict(model: torch.nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly shaped tensors, and
    integer (or boolean) tensors where the model has a floating-point weight."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    mismatched = [
        f"{name}: file {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state))
        if state[name].shape != expected[name].shape
    ]
    # a cast to the model dtype would turn integer data into weights without a word
    not_float = [
        f"{name}: file {state[name].dtype} vs model {expected[name].dtype}"
        for name in sorted(set(expected) & set(state))
        if expected[name].is_floating_point() and not state[name].is_floating_point()
    ]
    problems = [
        f"{label} ({len(items)}): {items[:10]}"
        for label, items in (
            ("missing", missing), ("unexpected", extra), ("shape mismatch", mismatched),
            ("not floating point", not_float),
        )
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))


def load_model(
    directory: str | Path, dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu"
) -> AudioLanguageModel:
    """Load a checkpoint directory (any format in `lalm.checkpoint.formats.FORMATS`).

    Args:
        directory: folder with config.json and its weights (model.safetensors, safetensors
            shards, pytorch_model.bin or .bin shards).
        dtype: "fp32" | "bf16" | "fp16" (see `lalm.config.resolve_dtype` for the CPU fallback).
        device: where the model goes.

    Returns:
        The model in eval mode, every parameter on `device` in the resolved dtype.

    Raises:
        CheckpointError: missing/invalid config, unknown format, missing/extra/misshapen keys,
            unreadable or half-written weight files.
    """
    config, fmt = load_config(directory)
    target = resolve_dtype(dtype, device)
    with torch.device("meta"):
        model = AudioLanguageModel(config)
    # a saved int8 checkpoint quantises the meta model first (lalm.checkpoint.quantized)
    state = from_disk(model, read_checkpoint_dir(directory), read_hf_config(directory),
                      fmt.to_lalm, str(directory))
    check_state_dict(model, state, str(directory))
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=device, dtype=target)
    wrong = [name for name, p in model.state_dict().items()
             if p.is_floating_point() and p.dtype != target]  # int8 codes stay int8
    if wrong:
        raise CheckpointError(f"{directory}: tensors not in {target} after loading: {wrong[:10]}")
    return model.eval()
