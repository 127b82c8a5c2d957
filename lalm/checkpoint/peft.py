"""LoRA adapters in PEFT's on-disk format, for a model exported in the Qwen2-Audio HF layout.

A PEFT adapter folder holds ``adapter_config.json`` (``peft_type: LORA``, ``r``, ``lora_alpha``,
``target_modules``, ...) and ``adapter_model.safetensors`` with two tensors per adapted Linear::

    base_model.model.<module path>.lora_A.weight   [r, in]    (lalm: lora_a)
    base_model.model.<module path>.lora_B.weight   [out, r]   (lalm: lora_b)

``<module path>`` is the module's name in transformers' in-memory
``Qwen2AudioForConditionalGeneration`` (``model.language_model.layers.0.self_attn.q_proj``,
``model.audio_tower.layers.1.fc1``, ``model.multi_modal_projector.linear``), found through the
checkpoint key map, and ``target_modules`` lists those paths exactly, so
``PeftModel.from_pretrained(Qwen2AudioForConditionalGeneration.from_pretrained(export), dir)``
adapts the same layers lalm did and computes what lalm computes. PEFT's update
``(lora_alpha / r) * B A x`` is `LoRALinear`'s. Reading accepts the transformers-4 on-disk paths
(``language_model.model.layers...``) too. Only plain LoRA is read: DoRA, rsLoRA, per-layer
rank/alpha patterns, trained biases and ``modules_to_save`` are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from lalm.checkpoint import qwen2_audio
from lalm.checkpoint.safetensors_io import read_safetensors, write_json
from lalm.config import ModelConfig
from lalm.errors import CheckpointError
from lalm.files import write_atomic
from lalm.model import AudioLanguageModel
from lalm.model.lora import LoRALinear, gate_adapters

#: A checkpoint folder's subfolder holding its decoder's gated adapters (`lalm.model.lora`:
#: they act on the sequences that hold audio), in PEFT's format; the folder's own weights are
#: the base model's.
AUDIO_ADAPTER = "audio_adapter"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_FACTORS = {"lora_a": "lora_A", "lora_b": "lora_B"}
# adapter_config.json fields whose non-default values mean more than plain LoRA
_PLAIN = {"use_dora": False, "use_rslora": False, "bias": "none", "fan_in_fan_out": False,
          "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
          "layers_to_transform": None, "target_parameters": None}


def _check_family(config: ModelConfig) -> None:
    if config.projector.audio_bos_eos:
        raise CheckpointError("PEFT adapters are written for the Qwen2-Audio HF layout; this is "
                              "a Qwen-Audio (v1) model")


def hf_module(name: str) -> str:
    """lalm module path -> transformers in-memory path (``decoder.layers.0.attn.q`` ->
    ``model.language_model.layers.0.self_attn.q_proj``)."""
    (disk,) = qwen2_audio.from_lalm({f"{name}.weight": None}).keys()  # type: ignore[dict-item]
    return qwen2_audio.memory_name(disk).removesuffix(".weight")


def lalm_module(path: str) -> str:
    """transformers module path (in-memory or on-disk names) -> lalm module path."""
    (key,) = qwen2_audio.to_lalm({f"{path}.weight": None}).keys()  # type: ignore[dict-item]
    return key.removesuffix(".weight")


def save_peft_adapter(state: Mapping[str, Tensor], config: ModelConfig, alpha: float,
                      directory: str | Path, dropout: float = 0.0,
                      base_model: str | None = None) -> list[Path]:
    """Write the LoRA factors of a lalm state dict as a PEFT adapter folder.

    Args:
        state: a (full) lalm state dict holding ``<module>.lora_a`` [r, in] and
            ``<module>.lora_b`` [out, r] for every adapted Linear (other keys are ignored).
        config: the model's config (Qwen2-Audio family only).
        alpha: LoRA alpha (the update is scaled by alpha / r).
        directory: the adapter folder (created).
        dropout: the adapters' training dropout (recorded for PEFT).
        base_model: recorded as ``base_model_name_or_path`` (e.g. the export folder).

    Returns:
        The files written, the config last.

    Raises:
        CheckpointError: a v1 model, no LoRA factors, or adapters of different ranks.
    """
    _check_family(config)
    modules = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith((".lora_a", ".lora_b"))})
    if not modules:
        raise CheckpointError("the state dict holds no LoRA factors (*.lora_a / *.lora_b)")
    ranks = {int(state[f"{m}.lora_a"].shape[0]) for m in modules}
    if len(ranks) != 1:
        raise CheckpointError(f"adapters of different ranks {sorted(ranks)} cannot share one "
                              "PEFT config")
    tensors = {f"{PREFIX}{hf_module(m)}.{peft}.weight":
               state[f"{m}.{ours}"].detach().to("cpu").contiguous()
               for m in modules for ours, peft in _FACTORS.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    write_atomic(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    peft_config: dict[str, Any] = {
        "peft_type": "LORA", "task_type": None, "r": ranks.pop(), "lora_alpha": alpha,
        "lora_dropout": dropout, "target_modules": [hf_module(m) for m in modules],
        "base_model_name_or_path": base_model, "inference_mode": True,
        "init_lora_weights": True, **_PLAIN}
    write_json(directory / CONFIG_FILE, peft_config)
    return [weights, directory / CONFIG_FILE]


def read_peft_config(directory: str | Path) -> dict[str, Any]:
    """The adapter_config.json of a PEFT folder, checked to be plain LoRA.

    Raises:
        CheckpointError: a missing or unreadable file, another PEFT type, or a LoRA variant
            lalm does not compute (named by field).
    """
    path = Path(directory) / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot read PEFT adapter config {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or data.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type must be LORA, got {data.get('peft_type')!r}"
                              if isinstance(data, dict) else f"{path} must hold a JSON object")
    extras = {"lora_bias": False, "use_qalora": False}  # newer PEFT fields, off when absent
    for field, plain in {**_PLAIN, **extras}.items():
        if data.get(field) is not None and data[field] != plain:
            raise CheckpointError(f"{path}: {field}={data[field]!r} is not supported (lalm "
                                  f"computes plain LoRA)")
    for field in ("r", "lora_alpha"):
        if not isinstance(data.get(field), (int, float)) or data[field] <= 0:
            raise CheckpointError(f"{path}: {field} must be a number > 0, got "
                                  f"{data.get(field)!r}")
    return data


def load_peft_adapter(model: nn.Module, directory: str | Path) -> list[str]:
    """Adapt `model` in place with the LoRA layers of a PEFT adapter folder.

    Each adapted Linear becomes a `LoRALinear` sharing (and freezing) the base weights, with the
    folder's factors and scaling ``lora_alpha / r``; its dropout is the folder's
    ``lora_dropout``.

    Args:
        model: a lalm `AudioLanguageModel` of the Qwen2-Audio family without adapters.
        directory: the PEFT folder.

    Returns:
        The lalm names of the adapted layers.

    Raises:
        CheckpointError: a bad config (`read_peft_config`), a key that is not a LoRA factor of
            a known module, a module that is not a plain Linear, or factors of a wrong shape.
    """
    _check_family(model.config)
    peft = read_peft_config(directory)
    tensors = read_safetensors(Path(directory) / WEIGHTS_FILE)
    factors: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        head, _, tail = key.removeprefix(PREFIX).rpartition(".lora_")
        factor = {"A.weight": "lora_a", "B.weight": "lora_b"}.get(tail)
        if factor is None or not head:
            raise CheckpointError(f"{directory}: {key!r} is not a LoRA A/B weight")
        try:
            name = lalm_module(head)
        except CheckpointError as e:
            raise CheckpointError(f"{directory}: {key!r} names no layer of the model") from e
        factors.setdefault(name, {})[factor] = value
    adapted = []
    for name, pair in sorted(factors.items()):
        linear = model.get_submodule(name)
        if type(linear) is not nn.Linear or set(pair) != set(_FACTORS):
            raise CheckpointError(f"{directory}: {name} needs both factors on a plain Linear")
        a, b = pair["lora_a"], pair["lora_b"]
        rank = int(peft["r"])
        if a.shape != (rank, linear.in_features) or b.shape != (linear.out_features, rank):
            raise CheckpointError(f"{directory}: {name} factors {tuple(a.shape)} and "
                                  f"{tuple(b.shape)} do not fit a {linear.in_features} -> "
                                  f"{linear.out_features} layer")
        layer = LoRALinear.from_linear(linear, rank, float(peft["lora_alpha"]),
                                       float(peft.get("lora_dropout") or 0.0))
        with torch.no_grad():
            layer.lora_a.copy_(a)
            layer.lora_b.copy_(b)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, layer)
        adapted.append(name)
    if not adapted:
        raise CheckpointError(f"{directory}: the adapter holds no LoRA weights")
    return adapted


def save_audio_adapter(model: AudioLanguageModel, directory: str | Path) -> list[Path]:
    """Write the decoder's gated adapters (`lalm.model.lora.gate_adapters`) as the PEFT folder
    ``directory/AUDIO_ADAPTER`` (`save_peft_adapter`); the checkpoint's weights are then the
    base model's (`lalm.checkpoint.save_model`).

    Raises:
        CheckpointError: adapters of different alphas, and as `save_peft_adapter`.
    """
    layers = [m for m in model.decoder.modules() if isinstance(m, LoRALinear)]
    alphas = {round(m.scaling * m.rank, 6) for m in layers}
    if len(alphas) != 1:
        raise CheckpointError(f"gated adapters of different alphas {sorted(alphas)} cannot "
                              "share one PEFT config")
    state = {k: v for k, v in model.state_dict().items() if k.startswith("decoder.")}
    return save_peft_adapter(state, model.config, alphas.pop(), Path(directory) / AUDIO_ADAPTER)


def load_audio_adapter(model: AudioLanguageModel, directory: str | Path) -> list[str]:
    """Adapt and gate `model` in place with a checkpoint's ``AUDIO_ADAPTER`` folder, if it has
    one (`load_peft_adapter`, then `lalm.model.lora.gate_adapters`).

    Returns:
        The adapted layers' names (none: no such folder).

    Raises:
        CheckpointError: a bad adapter folder, or adapted layers outside the decoder blocks.
    """
    folder = Path(directory) / AUDIO_ADAPTER
    if not folder.exists():
        return []
    names = load_peft_adapter(model, folder)
    try:
        gate_adapters(model.decoder)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from e
    return names
