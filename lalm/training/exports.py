"""What a run hands over for use, from its live model at the end or from any saved checkpoint.

* ``export/``: the trained model with LoRA merged, in its family's checkpoint layout (the
  Qwen2-Audio HF layout that transformers reads, or Qwen-Audio v1) with the tokenizer files;
* ``adapter/``: when LoRA is all a stage trains (the other parts frozen) on a Qwen2-Audio
  model, the adapters alone in PEFT's format (`lalm.checkpoint.peft`), to be applied to
  the stage's starting checkpoint with ``PeftModel.from_pretrained``.

`export_checkpoint` writes both from a ``checkpoints/step-*`` folder, so any step of a run, not
only its last, can be merged and shipped (``lalm export CHECKPOINT OUT``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from lalm.checkpoint.load import load_config
from lalm.checkpoint.peft import save_peft_adapter
from lalm.config import ModelConfig
from lalm.errors import CheckpointError, ConfigError
from lalm.model import AudioLanguageModel
from lalm.training.build import export, merged_copy
from lalm.training.distributed import unwrap
from lalm.training.stages import TrainConfig
from lalm.training.state import read_trainer, verify_checkpoint


def write_exports(model_config: ModelConfig, state: dict[str, Tensor], config: TrainConfig,
                  out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/export`` and, for a LoRA-only Qwen2-Audio stage, ``out_dir/adapter``.

    Args:
        model_config: the trained model's config.
        state: its full lalm state dict (LoRA factors included).
        config: the stage (parts, LoRA, tokenizer and starting checkpoint).
        out_dir: where the two folders go.

    Returns:
        The folders written.
    """
    with torch.device("meta"):
        shell = AudioLanguageModel(model_config)
    merged = merged_copy(shell, state, config.parts, config.lora)
    out_dir = Path(out_dir)
    export(merged, config.data.tokenizer or config.model.checkpoint, out_dir / "export")
    written = [out_dir / "export"]
    if config.parts.adapter_only() and not model_config.projector.audio_bos_eos:
        save_peft_adapter(state, model_config, config.lora.alpha, out_dir / "adapter",
                          config.lora.dropout, config.model.checkpoint)
        written.append(out_dir / "adapter")
    return written


def export_run(model: nn.Module, config: TrainConfig, out_dir: Path, main: bool) -> None:
    """`write_exports` of the live (possibly DDP / FSDP-wrapped) model; every rank calls it
    (FSDP gathers the shards), rank 0 (`main`) writes."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                  cpu_offload=True))
    if main:
        write_exports(unwrap(model).config, full, config, out_dir)


def _model_config(config: TrainConfig) -> ModelConfig:
    source = config.model
    if source.checkpoint is not None:
        return load_config(source.checkpoint)[0]
    try:
        return ModelConfig.from_name(source.preset, **source.overrides)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"model.preset/overrides: {e}") from e


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> list[Path]:
    """`write_exports` of a saved training checkpoint (a ``checkpoints/step-*`` folder).

    The stage config stored in the checkpoint says how the model was adapted; the starting
    checkpoint it names gives the model config (and the tokenizer, unless
    ``data.tokenizer`` is set), so both must still be where the run found them.

    Raises:
        CheckpointError: not a training checkpoint, or one whose files fail their manifest
            (`verify_checkpoint`: sizes and sha256), or weights that do not fit the stage.
        ConfigError: a stored config that no longer builds.
    """
    checkpoint = Path(checkpoint)
    if not (checkpoint / "manifest.json").is_file():
        raise CheckpointError(f"{checkpoint} is not a training checkpoint (no manifest.json)")
    verify_checkpoint(checkpoint)  # before anything is read: no corrupt or planted bytes
    trainer = read_trainer(checkpoint)
    config = TrainConfig.from_dict(trainer["config"], f"{checkpoint}/trainer.json")
    state = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
    try:
        return write_exports(_model_config(config), state, config, out_dir)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or misshapen keys
        raise CheckpointError(f"{checkpoint}: the weights do not fit the stage's model: "
                              f"{e}") from e
