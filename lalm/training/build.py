"""What a stage trains on, built from its config: model (parts, LoRA), tokenizer, data, export.

Kept apart from `lalm.training.loop` so the loop reads top to bottom; every function here is
usable (and tested) on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from lalm.checkpoint import load_model
from lalm.checkpoint.save import save_with_tokenizer
from lalm.config import ModelConfig
from lalm.data.dataset import AudioTextDataset
from lalm.data.formats import read_examples
from lalm.data.manifest import AudioRef, Example
from lalm.errors import ConfigError
from lalm.model import AudioLanguageModel
from lalm.model.encoder import AudioEncoder
from lalm.prompt import Family
from lalm.tokenizer import Tokenizer, load_tokenizer
from lalm.training.dpo import PreferenceDataset, PreferencePair, read_pairs
from lalm.training.encoder_cache import EncodedDataset
from lalm.training.lora import apply_lora, merge_lora
from lalm.training.stages import PARTS, DataSource, LoraConfig, PartsConfig, TrainConfig

def init_weights(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Fresh weights for training from scratch, drawn from a generator seeded with `seed`:
    Linear, conv and embedding weights ~ N(0, std), biases 0, norm gains 1, the v1 audio
    BOS/EOS rows ~ N(0, std). Buffers (the sinusoidal table) are left as they are."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 2)
            is_norm = leaf[-2].endswith(("norm", "_ln", "ln_post")) if len(leaf) > 1 else False
            if is_norm and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def load_stage_tokenizer(config: TrainConfig) -> Tokenizer:
    """The stage's tokenizer: data.tokenizer, else the starting checkpoint's."""
    return load_tokenizer(config.data.tokenizer or config.model.checkpoint)


def build_model(config: TrainConfig, tokenizer: Tokenizer) -> AudioLanguageModel:
    """The starting model (fp32, CPU) with the stage's trainable parts and LoRA adapters.

    Raises:
        ConfigError: an unknown preset, a vocabulary smaller than the tokenizer, or a model of
            the other family than the tokenizer.
        CheckpointError: an unreadable starting checkpoint.
    """
    source = config.model
    if source.checkpoint is not None:
        model = load_model(source.checkpoint, dtype="fp32")
    else:
        try:
            model_config = ModelConfig.from_name(source.preset, **source.overrides)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"model.preset/overrides: {e}") from e
        model = AudioLanguageModel(model_config)
        init_weights(model, source.init_seed)
    if model.config.decoder.vocab_size < len(tokenizer):
        raise ConfigError(f"model vocab_size {model.config.decoder.vocab_size} is smaller than "
                          f"the tokenizer ({len(tokenizer)} ids, {tokenizer.source})")
    if model.config.projector.audio_bos_eos != (tokenizer.family is Family.QWEN_AUDIO):
        raise ConfigError(f"tokenizer {tokenizer.source} is {tokenizer.family.value} but the "
                          f"model is of the other family (projector.audio_bos_eos)")
    set_parts(model, config.parts, config.lora)
    return model.train()


def set_parts(model: AudioLanguageModel, parts: PartsConfig, lora: LoraConfig) -> None:
    """Freeze, unfreeze or LoRA-adapt each part in place (`PartsConfig`)."""
    for part in PARTS:
        mode = getattr(parts, part)
        module = getattr(model, part)
        module.requires_grad_(mode == "full")
        if mode == "lora":
            apply_lora(module, lora, prefix=part)


def merged_copy(model: AudioLanguageModel, state: dict[str, Tensor],
                parts: PartsConfig, lora: LoraConfig) -> AudioLanguageModel:
    """A CPU copy of the trained model with LoRA merged: same architecture and key names as a
    model that never had adapters.

    Args:
        model: the trained model (only its config is read).
        state: its full state dict (`torch.distributed.checkpoint.state_dict` form).
        parts, lora: how the stage adapted it.
    """
    with torch.device("meta"):
        copy = AudioLanguageModel(model.config)
    set_parts(copy, parts, lora)
    copy.load_state_dict(state, strict=True, assign=True)
    merge_lora(copy)
    return copy.to("cpu").eval()


def export(model: AudioLanguageModel, tokenizer_path: str | Path,
           directory: str | Path) -> list[Path]:
    """Write a merged model in its family's checkpoint layout (Qwen2-Audio HF, which transformers'
    `Qwen2AudioForConditionalGeneration` reads, or Qwen-Audio v1) with its tokenizer files;
    Qwen2-Audio gets the tokenizer's stop ids and the source folder's decoding fields
    (`lalm.checkpoint.save`), so transformers' ``generate()`` stops where lalm does."""
    return save_with_tokenizer(model, directory, tokenizer_path)


def may_skip_parts(dataset: Dataset, parts: PartsConfig) -> bool:
    """Whether a batch of `dataset` (`build_dataset`'s) can leave trainable parameters unused,
    so that DDP must look for them: a text-only item uses neither the encoder nor the projector,
    so True when the mix holds one and either of those parts trains (fully or through LoRA)."""
    items = dataset.items if isinstance(dataset, PreferenceDataset) else dataset
    examples: list[Example] = items.examples  # type: ignore[attr-defined]
    audio_parts_train = parts.encoder != "frozen" or parts.projector != "frozen"
    return audio_parts_train and any(not e.audios for e in examples)


def _absolute(example: Example, root: Path) -> Example:
    audios = tuple(AudioRef(str((root / a.path).resolve()), a.offset, a.duration)
                   for a in example.audios)
    return dataclasses.replace(example, audios=audios)


def mix(sources: Sequence[Sequence[object]], weights: Sequence[float], seed: int) -> list:
    """The mixed item list: round(weight x size) items of each source, whole copies first, then
    a seeded draw without repetition; sources in order."""
    out: list = []
    for index, (items, weight) in enumerate(zip(sources, weights)):
        count = round(weight * len(items))
        whole, rest = divmod(count, len(items)) if items else (0, 0)
        draw = np.random.default_rng([seed, index]).permutation(len(items))[:rest]
        out.extend([*items] * whole + [items[int(i)] for i in sorted(draw)])
    return out


def _read_source(source: DataSource, objective: str) -> list:
    root = source.root()
    if objective == "dpo":
        pairs = read_pairs(source.manifest)
        return [dataclasses.replace(p, prompt=_absolute(p.prompt, root)) for p in pairs
                if source.split is None or p.prompt.split == source.split]
    return [_absolute(e, root) for e in read_examples(source.manifest, source.format)
            if source.split is None or e.split == source.split]


def build_dataset(sources: Sequence[DataSource], config: TrainConfig, tokenizer: Tokenizer,
                  n_mels: int, seed: int, encoder: AudioEncoder | None = None) -> Dataset:
    """The mixed dataset of `sources` (`AudioTextDataset`, or `PreferenceDataset` for DPO);
    audio paths are made absolute so sources with different roots mix. With `encoder` (the
    frozen encoder, for ``data.encoder_cache``) the items carry its cached outputs instead of
    log-mels (`EncodedDataset`).

    Raises:
        ConfigError: a source that leaves no item.
        DataError: an unreadable manifest.
    """
    lists = [_read_source(s, config.objective) for s in sources]
    for s, items in zip(sources, lists):
        if not items:
            raise ConfigError(f"data source {s.manifest} (split {s.split}) has no items")
    items = mix(lists, [s.weight for s in sources], seed)
    limit = config.data.max_audio_seconds
    if config.objective == "dpo":
        pairs: list[PreferencePair] = items
        return PreferenceDataset(pairs, tokenizer, n_mels, max_audio_seconds=limit)
    dataset = AudioTextDataset(items, tokenizer, n_mels, max_audio_seconds=limit,
                               all_turns=config.data.loss_on == "all_assistant")
    return dataset if encoder is None else EncodedDataset(dataset, encoder, config.run.progress)
