"""Load a checkpoint directory as published (config.json + weights) into lalm's model.

The family (Qwen2-Audio, Qwen-Audio v1, ...) is recognised from config.json by
`lalm.checkpoint.formats.detect_format`; weights are safetensors (single or sharded) or PyTorch
`.bin` shards (`lalm.checkpoint.safetensors_io.read_checkpoint_dir`).

No transformers needed: the model is built on the meta device (no memory, no init), the weights
are memory-mapped in their storage dtype, renamed by the family's key map, cast only where the
requested precision differs (one tensor at a time) and assigned (`load_state_dict(assign=True)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lalm.checkpoint.formats import CheckpointFormat, detect_format
from lalm.checkpoint.hf_json import read_json
from lalm.checkpoint.peft import load_audio_adapter
from lalm.checkpoint.quantized import from_disk
from lalm.checkpoint.safetensors_io import read_checkpoint_dir
from lalm.config import ModelConfig, resolve_precision
from lalm.errors import CheckpointError, PrecisionError
from lalm.model import AudioLanguageModel
from lalm.model.quant import QuantizedLinear, quantize_model
from lalm.model.upcast import upcast_compute

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
    directory: str | Path,
    precision: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    *,
    dtype: str | torch.dtype | None = None,
) -> AudioLanguageModel:
    """Load a checkpoint directory (any format in `lalm.checkpoint.formats.FORMATS`).

    The weights are memory-mapped and assigned, never copied in their storage dtype: a bf16
    file loaded as bf16 (or "auto") costs about its size in memory. A cast to another dtype
    copies one tensor at a time, each releasing its file pages. Where the device has no fast
    kernels for the weight dtype (a bf16 model on a CPU without bf16 units), the weights stay
    in that dtype and compute in float32 (`lalm.model.upcast`; `lalm.config.resolve_precision`).

    Args:
        directory: folder with config.json and its weights (model.safetensors, safetensors
            shards, pytorch_model.bin or .bin shards).
        precision: "auto" (the checkpoint's storage dtype; None means the same) | "fp32" |
            "bf16" | "fp16" | "int8" | "int4" ("auto", then the decoder's Linear layers and
            lm_head quantised to that weight-only scheme: `lalm.model.quant`), or a torch
            dtype. A saved int8/int4 checkpoint loads as such under any of them.
        device: where the model goes.
        dtype: the former name of `precision` (give one of the two).

    Returns:
        The model in eval mode on `device`: Linear and Embedding weights in the resolved
        weight dtype, everything else in the compute dtype (the same dtype unless upcast).
        A folder's `lalm.checkpoint.peft.AUDIO_ADAPTER` (gated adapters) is applied to it;
        the adapted layers are not quantised (int8/int4 leave them float).

    Raises:
        PrecisionError: an unknown precision, or `precision` and `dtype` both given.
        CheckpointError: missing/invalid config, unknown format, missing/extra/misshapen keys,
            unreadable or half-written weight files.
    """
    if dtype is not None:
        if precision not in ("auto", None, dtype):
            raise PrecisionError(f"give precision or dtype, not both ({precision!r}, {dtype!r})")
        precision = dtype
    config, fmt = load_config(directory)
    with torch.device("meta"):
        model = AudioLanguageModel(config)
    # a saved int8 checkpoint quantises the meta model first (lalm.checkpoint.quantized)
    state = from_disk(model, read_checkpoint_dir(directory), read_hf_config(directory),
                      fmt.to_lalm, str(directory))
    if not config.decoder.tie_embeddings and \
            state.get("decoder.lm_head.weight") is state.get("decoder.embed.weight", False):
        raise CheckpointError(f"{directory}: lm_head.weight is missing and the config says the "
                              "embeddings are not tied (tie_word_embeddings: false)")
    target = resolve_precision(precision, device, storage_dtype(state))
    check_state_dict(model, state, str(directory))
    for name, tensor in state.items():  # one tensor at a time: each copy frees its file view
        if tensor.is_floating_point():
            state[name] = tensor.to(device=device, dtype=target.weights)
        else:
            state[name] = tensor.to(device=device)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    load_audio_adapter(model, directory)
    saved_quantised = any(isinstance(m, QuantizedLinear) for m in model.modules())
    if target.quant and not saved_quantised:  # weight-only int8/int4 decoder; each float
        quantize_model(model, target.quant)  # weight it replaces is freed
    if target.upcast:
        upcast_compute(model, target.compute)
    wanted = {target.weights, target.compute}
    wrong = [name for name, p in model.state_dict().items()
             if p.is_floating_point() and p.dtype not in wanted]  # int8 codes stay int8
    if wrong:
        raise CheckpointError(f"{directory}: tensors not in {target.weights} after loading: "
                              f"{wrong[:10]}")
    return model.eval()


def storage_dtype(state: dict[str, Tensor]) -> torch.dtype:
    """The floating-point dtype holding most of a state dict's bytes (float32 if none)."""
    sizes: dict[torch.dtype, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.numel() * tensor.itemsize
    return max(sizes, key=sizes.__getitem__) if sizes else torch.float32
