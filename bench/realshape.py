"""A scaled real-shape checkpoint for benches: Qwen2-Audio-7B widths, 2 + 2 layers, on disk.

`build_realshape_checkpoint(out_dir)` writes a Hugging Face Qwen2-Audio directory (config.json,
bf16 safetensors shards + index, preprocessor config and the real Qwen2-Audio tokenizer files
from ../shared/fixtures when present) whose every tensor has the shape of the released
Qwen/Qwen2-Audio-7B (hidden 4096, MLP 11008, vocab 156,032, 32 heads / 32 kv heads; encoder 1280
wide, 20 heads, MLP 5120, 128 mels) but with 2 decoder and 2 encoder layers and random weights:
about 3.5 GB instead of 16.8 GB. Both lalm and transformers load it. The tensors are made and
written one shard at a time, so building it needs about two shards of memory (< 3 GB).

Figures for the 32 + 32-layer model are extrapolated per layer (`extrapolate`): everything that
is not a layer (embeddings, lm_head, conv stem, projector) is measured whole, each layer is
measured twice (2 layers) and counted 32 times.

    from bench.realshape import build_realshape_checkpoint, file_bytes, extrapolate
    path = build_realshape_checkpoint(tmp)          # -> tmp (a checkpoint directory)
    full = file_bytes(32, 32)                       # bytes of the real 16.8 GB file
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lalm.checkpoint import qwen2_audio
from lalm.checkpoint.save import preprocessor_config
from lalm.config import ModelConfig
from lalm.model import AudioLanguageModel

REAL_LAYERS = 32  # decoder and encoder blocks of Qwen2-Audio-7B
SHARD_BYTES = 1_500_000_000  # the 1.28 GB embedding and lm_head each get a shard
TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / \
    "qwen2_audio_tokenizer"


def realshape_config(n_layer: int = 2, n_audio_layer: int = 2,
                     vocab_size: int = 156032) -> ModelConfig:
    """The Qwen2-Audio-7B config with `n_layer` decoder and `n_audio_layer` encoder blocks."""
    return ModelConfig.from_name("qwen2-audio-7b", decoder={"n_layer": n_layer,
                                                            "vocab_size": vocab_size},
                                 encoder={"n_layer": n_audio_layer})


def _shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Hugging Face on-disk name -> shape of every tensor (the model built on meta)."""
    with torch.device("meta"):
        model = AudioLanguageModel(config)
    return {name: t.shape for name, t in qwen2_audio.from_lalm(model.state_dict()).items()}


def file_bytes(n_layer: int = 2, n_audio_layer: int = 2, dtype: torch.dtype = torch.bfloat16,
               vocab_size: int = 156032) -> int:
    """Weight bytes of the checkpoint `build_realshape_checkpoint` writes (headers aside);
    ``file_bytes(32, 32)`` is the real Qwen2-Audio-7B's (16.8 GB in bf16)."""
    shapes = _shapes(realshape_config(n_layer, n_audio_layer, vocab_size))
    return sum(shape.numel() for shape in shapes.values()) * dtype.itemsize


def layer_bytes(dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(bytes of one decoder block, bytes of one encoder block) of the 7B shapes."""
    one, decoder, encoder = file_bytes(1, 1, dtype), file_bytes(2, 1, dtype), \
        file_bytes(1, 2, dtype)
    return decoder - one, encoder - one


def extrapolate(measured: float, per_layer: float, measured_layers: int = 2,
                full_layers: int = REAL_LAYERS) -> float:
    """A whole-model figure from a scaled measurement: ``measured`` (taken with
    `measured_layers` blocks) plus ``per_layer`` for each block the full model has more."""
    return measured + (full_layers - measured_layers) * per_layer


def _random(shape: torch.Size, name: str, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Norm weights ~ 1 + N(0, 0.1), everything else ~ N(0, 0.02); made in 64 Mi-element
    slices so no float32 copy of a large tensor exists."""
    out = torch.empty(shape, dtype=dtype)
    flat = out.view(-1)
    is_norm = "norm" in name or "layer_norm" in name
    step = 1 << 26
    for start in range(0, flat.numel(), step):
        part = torch.randn(min(step, flat.numel() - start), generator=gen)
        flat[start:start + part.numel()] = (1.0 + 0.1 * part) if is_norm else 0.02 * part
    return out


def build_realshape_checkpoint(out_dir: str | Path, n_layer: int = 2, n_audio_layer: int = 2,
                               dtype: torch.dtype = torch.bfloat16, *,
                               vocab_size: int = 156032, seed: int = 0) -> Path:
    """Write the scaled real-shape Qwen2-Audio checkpoint into ``out_dir``.

    Args:
        out_dir: target folder (created).
        n_layer, n_audio_layer: decoder and encoder blocks (the real model has 32 of each).
        dtype: weight dtype on disk (the released checkpoint is bf16).
        vocab_size: rows of the embedding and lm_head (156,032 as released; smaller only to
            fit a float32 load of the file in a bench's memory budget).
        seed: weight seed.

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = realshape_config(n_layer, n_audio_layer, vocab_size)
    shapes = _shapes(config)
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(shapes):
        nbytes = shapes[name].numel() * dtype.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for number, names in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: _random(shapes[name], name, dtype, gen) for name in names}
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(names, file))
    total = sum(s.numel() for s in shapes.values()) * dtype.itemsize
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    dtype_name = str(dtype).removeprefix("torch.")
    if TOKENIZER_DIR.is_dir():
        for source in TOKENIZER_DIR.iterdir():
            if source.is_file() and source.name not in ("config.json", "README.md"):
                shutil.copyfile(source, out / source.name)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(config)))
    (out / "config.json").write_text(json.dumps(qwen2_audio.config_to_hf(config, dtype_name),
                                                indent=1))
    return out
