"""What a stage trains on, built from its config: model (parts, LoRA), tokenizer, data, export.

Kept apart from `lalm.training.loop` so the loop reads top to bottom; every function here is
usable (and tested) on its own.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset

from lalm.checkpoint import load_model
from lalm.checkpoint.save import save_with_tokenizer
from lalm.config import ModelConfig
from lalm.data.dataset import AudioTextDataset
from lalm.data.formats import BadRecord, iter_format
from lalm.data.manifest import AudioRef, Example
from lalm.errors import ConfigError, DataError, LalmError
from lalm.model import AudioLanguageModel
from lalm.model.encoder import AudioEncoder
from lalm.model.lora import gate_adapters, merge_lora
from lalm.tokenizer import Tokenizer, load_tokenizer
from lalm.training.dpo import PreferenceDataset, read_pairs
from lalm.training.encoder_cache import EncodedDataset
from lalm.training.lora import apply_lora
from lalm.training.qlora import quantize_lora_base
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
    if model.config.projector.audio_bos_eos != bool(tokenizer.family.boundary_rows):
        raise ConfigError(f"tokenizer {tokenizer.source} is {tokenizer.family.name} but the "
                          f"model is of the other family (projector.audio_bos_eos)")
    set_parts(model, config.parts, config.lora)
    return model.train()


def enable_grad_checkpointing(model: AudioLanguageModel) -> None:
    """Recompute every encoder block and decoder layer in backward instead of storing its
    activations (the blocks' parameter names do not change)."""
    for block in [*model.encoder.blocks, *model.decoder.layers]:
        forward = block.forward

        def checkpointed(*args: Any, _forward: Callable = forward) -> Tensor:
            return checkpoint(_forward, *args, use_reentrant=False)

        block.forward = checkpointed


def set_parts(model: AudioLanguageModel, parts: PartsConfig, lora: LoraConfig) -> None:
    """Freeze, unfreeze or LoRA-adapt each part in place (`PartsConfig`; with
    ``lora.base_precision: int8`` the decoder's adapted layers get an int8 base,
    `lalm.training.qlora`; with ``lora.applies_to: audio`` its adapters are gated to the
    sequences holding audio, `lalm.model.lora.gate_adapters`).

    Raises:
        ConfigError: ``applies_to: audio`` without ``parts.decoder: lora``.
    """
    if lora.applies_to == "audio" and parts.decoder != "lora":
        raise ConfigError("lora.applies_to: audio gates the decoder's adapters; it needs "
                          "parts.decoder: lora")
    for part in PARTS:
        mode = getattr(parts, part)
        module = getattr(model, part)
        module.requires_grad_(mode == "full")
        if mode == "lora":
            apply_lora(module, lora, prefix=part)
            if part == "decoder" and lora.base_precision == "int8":
                quantize_lora_base(module)
            if part == "decoder" and lora.applies_to == "audio":
                gate_adapters(module)


def merged_copy(model: AudioLanguageModel, state: dict[str, Tensor],
                parts: PartsConfig, lora: LoraConfig) -> AudioLanguageModel:
    """A CPU copy of the trained model with LoRA merged: same architecture and key names as a
    model that never had adapters (gated adapters stay unmerged: `lalm.model.lora`).

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
    if isinstance(dataset, SkipBadItems):
        dataset = dataset.dataset
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


class SkipBadItems(Dataset):
    """A dataset whose unreadable items (`DataError`, `AudioError`) come out as
    ``{"bad_item": reason}`` instead of raising (``data.on_bad_item: skip``); `SkipBadCollator`
    leaves them out of the batch and reports them. Sizes and examples are the wrapped ones."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except LalmError as e:
            return {"bad_item": str(e)}

    def __getattr__(self, name: str) -> Any:  # lengths, examples, items of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


@dataclasses.dataclass(frozen=True)
class SkipBadCollator:
    """A collate function over `SkipBadItems` items: the good ones collated, the reasons of the
    bad ones under ``bad_items`` (a batch of bad items only: just ``bad_items``)."""

    collate: Callable[[list[Any]], dict[str, Any]]

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        bad = [i["bad_item"] for i in items if isinstance(i, dict) and "bad_item" in i]
        good = [i for i in items if not (isinstance(i, dict) and "bad_item" in i)]
        return {**(self.collate(good) if good else {}), "bad_items": bad}


def report_bad_items(bad: list[str], where: str, on_bad_item: str) -> None:
    """Fail on bad items (``fail``: DataError) or warn that they are left out (``skip``).

    Raises:
        DataError: with ``fail``, naming the count and the first of them.
    """
    if not bad:
        return
    shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    if on_bad_item == "fail":
        raise DataError(f"{len(bad)} bad item(s) in {where}: {shown} (lalm data check lists "
                        f"them; data.on_bad_item=skip leaves them out)")
    warnings.warn(f"skipping {len(bad)} bad item(s) of {where} (data.on_bad_item=skip): "
                  f"{shown}", stacklevel=2)


def _read_source(source: DataSource, config: TrainConfig) -> tuple[list, int]:
    """(the source's items of its split, how many bad ones were left out)."""
    root = source.root()
    if config.objective == "dpo":
        pairs = read_pairs(source.manifest)
        return [dataclasses.replace(p, prompt=_absolute(p.prompt, root)) for p in pairs
                if source.split is None or p.prompt.split == source.split], 0
    manifest_dir = Path(source.manifest).parent.resolve()
    if source.audio_root and Path(source.audio_root).resolve() != manifest_dir:
        # the readers resolve relative audio paths against the manifest's folder: another root
        # would be silently ignored (a same-named file beside the manifest would train)
        raise ConfigError(f"data source {source.manifest}: audio_root={source.audio_root!r} is "
                          f"only read for DPO pairs; a {source.format or 'manifest'} resolves "
                          f"its relative audio paths against its own folder: write absolute "
                          f"paths or move the manifest")
    examples, bad = [], []
    for item in iter_format(source.manifest, source.format):
        if isinstance(item, BadRecord):
            bad.append(f"{item.location}: {item.reason}")
        elif source.split is not None and item.split != source.split:
            continue
        elif not item.target.strip():  # it would train only the end token (lalm data check)
            bad.append(f"example {item.id!r}: empty target")
        else:
            examples.append(_absolute(item, root))
    report_bad_items(bad, source.manifest, config.data.on_bad_item)
    return examples, len(bad)


def _sized(items: list, make: Callable[[list], Dataset], config: TrainConfig) -> Dataset:
    """`make(items)` whose batching sizes can be read; with ``data.on_bad_item: skip`` the items
    whose sizes cannot (an unreadable audio header) are left out with a warning."""
    dataset = make(items)
    try:
        dataset.lengths  # type: ignore[attr-defined]  # noqa: B018 - read to check
        return dataset
    except DataError:
        if config.data.on_bad_item == "fail":
            raise
    good, bad = [], []
    for item in items:
        try:
            make([item]).lengths  # type: ignore[attr-defined]
            good.append(item)
        except DataError as e:
            bad.append(str(e))
    report_bad_items(bad, "the data mix", "skip")
    return make(good)


def build_dataset(sources: Sequence[DataSource], config: TrainConfig, tokenizer: Tokenizer,
                  n_mels: int, seed: int, encoder: AudioEncoder | None = None,
                  row_counts: Callable[[Tensor], Tensor] | None = None) -> tuple[Dataset, int]:
    """The mixed dataset of `sources` (`AudioTextDataset`, or `PreferenceDataset` for DPO);
    audio paths are made absolute so sources with different roots mix. With `encoder` (the
    frozen encoder, for ``data.encoder_cache``) the items carry its cached outputs instead of
    log-mels (`EncodedDataset`). With ``data.on_bad_item: skip`` bad records, empty targets and
    unreadable items are left out (`SkipBadItems`). ``row_counts``: the model's audio rows per
    clip (`AudioLanguageModel.audio_row_counts`; `AudioTextDataset`, `PreferenceDataset`).

    Returns:
        (the dataset, how many bad items were left out before training; those found while
        training come out of its batches: `SkipBadCollator`).

    Raises:
        ConfigError: a source that leaves no item.
        DataError: an unreadable manifest, or (``data.on_bad_item: fail``) a bad item.
    """
    lists = []
    skipped = 0
    for s in sources:
        items, bad = _read_source(s, config)
        if not items:
            raise ConfigError(f"data source {s.manifest} (split {s.split}) has no items")
        lists.append(items)
        skipped += bad
    items = mix(lists, [s.weight for s in sources], seed)
    limit = config.data.max_audio_seconds
    if config.objective == "dpo":
        dataset = _sized(items, lambda x: PreferenceDataset(
            x, tokenizer, n_mels, max_audio_seconds=limit, row_counts=row_counts), config)
    else:
        dataset = _sized(items, lambda x: AudioTextDataset(
            x, tokenizer, n_mels, max_audio_seconds=limit,
            all_turns=config.data.loss_on == "all_assistant", row_counts=row_counts), config)
    skipped += len(items) - len(dataset)  # type: ignore[arg-type]
    if config.data.on_bad_item == "skip":
        dataset = SkipBadItems(dataset)
    if encoder is not None:
        dataset = EncodedDataset(dataset, encoder, config.run.progress)  # type: ignore[arg-type]
    return dataset, skipped
