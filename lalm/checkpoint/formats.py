"""Registry of foreign checkpoint formats lalm reads (and writes): one entry per family.

A format is data plus small functions: how to recognise its config.json, translate the config,
and rename (or split) its tensors into lalm's names and back. Adding a family means adding an
entry here, never touching the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lalm.checkpoint import qwen2_5_omni, qwen2_audio, qwen3_asr, qwen_audio_v1
from lalm.config import ModelConfig
from lalm.errors import CheckpointError

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class CheckpointFormat:
    """How one checkpoint family maps onto `AudioLanguageModel`.

    Attributes:
        name: format name used by `save_model(..., format=name)`.
        family: the name of the prompt family its checkpoints are (`lalm.prompt.family_spec`):
            the tokenizer of such a directory is read as that family's.
        matches: whether a parsed config.json belongs to this family.
        config_from_hf: (config.json dict, source name for errors) -> ModelConfig.
        to_lalm: foreign state dict -> lalm state dict.
        config_to_hf: (ModelConfig, torch dtype name) -> config.json dict; None if not writable.
        from_lalm: lalm state dict -> foreign state dict; None if not writable.
    """

    name: str
    family: str
    matches: Callable[[dict[str, Any]], bool]
    config_from_hf: Callable[[dict[str, Any], str], ModelConfig]
    to_lalm: Callable[[StateDict], StateDict]
    config_to_hf: Callable[[ModelConfig, str], dict[str, Any]] | None = None
    from_lalm: Callable[[StateDict], StateDict] | None = None


FORMATS: dict[str, CheckpointFormat] = {
    "qwen2_audio": CheckpointFormat(
        name="qwen2_audio",
        family="qwen2-audio",
        matches=qwen2_audio.is_qwen2_audio,
        config_from_hf=qwen2_audio.config_from_hf,
        to_lalm=qwen2_audio.to_lalm,
        config_to_hf=qwen2_audio.config_to_hf,
        from_lalm=qwen2_audio.from_lalm,
    ),
    "qwen_audio_v1": CheckpointFormat(
        name="qwen_audio_v1",
        family="qwen-audio",
        matches=qwen_audio_v1.is_qwen_audio_v1,
        config_from_hf=qwen_audio_v1.config_from_hf,
        to_lalm=qwen_audio_v1.to_lalm,
        config_to_hf=qwen_audio_v1.config_to_hf,
        from_lalm=qwen_audio_v1.from_lalm,
    ),
    "qwen2_5_omni": CheckpointFormat(
        name="qwen2_5_omni",
        family="qwen2.5-omni",
        matches=qwen2_5_omni.is_qwen2_5_omni,
        config_from_hf=qwen2_5_omni.config_from_hf,
        to_lalm=qwen2_5_omni.to_lalm,
        config_to_hf=qwen2_5_omni.config_to_hf,
        from_lalm=qwen2_5_omni.from_lalm,
    ),
    "qwen3_asr": CheckpointFormat(
        name="qwen3_asr",
        family="qwen3-asr",
        matches=qwen3_asr.is_qwen3_asr,
        config_from_hf=qwen3_asr.config_from_hf,
        to_lalm=qwen3_asr.to_lalm,
        config_to_hf=qwen3_asr.config_to_hf,
        from_lalm=qwen3_asr.from_lalm,
    ),
}


def native_format(config: ModelConfig) -> str:
    """The format a model of this config is published in: Qwen-Audio (v1) models carry the
    learned audio BOS/EOS rows, Qwen3-ASR models an MLP projector, Qwen2.5-Omni thinkers a
    windowed encoder; Qwen2-Audio models none of these."""
    if config.projector.audio_bos_eos:
        return "qwen_audio_v1"
    if config.projector.kind == "mlp":
        return "qwen3_asr"
    return "qwen2_audio" if config.encoder.n_window is None else "qwen2_5_omni"


def detect_format(hf_config: dict[str, Any], source: str) -> CheckpointFormat:
    """The format whose `matches` accepts this config.json.

    Raises:
        CheckpointError: no known format matches (the message names model_type).
    """
    for fmt in FORMATS.values():
        if fmt.matches(hf_config):
            return fmt
    raise CheckpointError(
        f"{source}: unknown checkpoint kind (model_type {hf_config.get('model_type')!r}); "
        f"lalm reads {sorted(FORMATS)}"
    )
