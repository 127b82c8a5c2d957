"""Save lalm's model in a foreign checkpoint layout that its reference loads.

`save_model(model, dir)` writes the model's own family: a Qwen2-Audio directory (config.json +
safetensors) that `Qwen2AudioForConditionalGeneration.from_pretrained(dir)` reads, or a
Qwen-Audio (v1) directory in the layout of the published QWen code. Every file is written to a
temporary name and renamed; weights go first and config.json last, so a directory with a
config always has complete weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lalm.checkpoint.formats import FORMATS, native_format
from lalm.checkpoint.load import CONFIG_FILE
from lalm.checkpoint.safetensors_io import write_checkpoint_dir, write_json
from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_model(
    model: AudioLanguageModel,
    directory: str | Path,
    format: str | None = None,  # noqa: A002 - the user-facing name
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Write `model` as a checkpoint directory of the given format.

    Args:
        model: the model to save.
        directory: target folder (created if needed; existing files of the same names replaced).
        format: a key of `lalm.checkpoint.formats.FORMATS` that can be written; default: the
            model's own family (`native_format`).
        dtype: cast the weights to this dtype on the way out; default: as they are.
        max_shard_bytes: split the weights into shards of at most this size (plus an index).

    Returns:
        The files written, config.json last.

    Raises:
        CheckpointError: unknown or read-only format, or a model the format cannot express.
    """
    format = format or native_format(model.config)
    fmt = FORMATS.get(format)
    if fmt is None or fmt.from_lalm is None or fmt.config_to_hf is None:
        writable = sorted(name for name, f in FORMATS.items() if f.from_lalm is not None)
        raise CheckpointError(f"cannot save format {format!r}; writable formats: {writable}")
    state = {name: t if dtype is None else t.to(dtype) for name, t in model.state_dict().items()}
    weight_dtype = dtype or model.decoder.embed.weight.dtype
    if weight_dtype not in _DTYPE_NAMES:
        raise CheckpointError(f"cannot save weights as {weight_dtype}")
    hf_config = fmt.config_to_hf(model.config, _DTYPE_NAMES[weight_dtype])
    directory = Path(directory)
    written = write_checkpoint_dir(fmt.from_lalm(state), directory, max_shard_bytes)
    config_path = directory / CONFIG_FILE
    write_json(config_path, hf_config)
    return [*written, config_path]
