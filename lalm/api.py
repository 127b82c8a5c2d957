"""lalm's public entry points: load a checkpoint as a `Pipeline`, run it on audio and text.

    import lalm
    pipe = lalm.load_model("Qwen2-Audio-7B-Instruct", dtype="fp32")
    print(pipe.chat("What is in this clip?", audios=["a.wav"]).text)
    for result in pipe.transcribe(["a.wav", "b.flac"], batch_size=8):
        print(result.parsed.text)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from lalm.assets import DEFAULT_MODEL, default_model_dir
from lalm.errors import CheckpointError
from lalm.generation import GenerationOptions, GenerationResult, Pipeline
from lalm.prompt import AudioSource


def load_model(path: str | Path, dtype: str | torch.dtype = "fp32",
               device: str | torch.device = "cpu") -> Pipeline:
    """Load a checkpoint directory: model, tokenizer and prompt family in one `Pipeline`.

    Args:
        path: a Hugging Face Qwen2-Audio directory (config.json, safetensors, tokenizer files),
            or ``"default"``: lalm's default model in the cache (``lalm demo`` makes it once,
            in about 10 minutes on 2 CPU cores; `lalm.demo.ensure_default_model` from Python).
        dtype: "fp32" | "bf16" | "fp16" (on a CPU without bf16 units, falls back to fp32).
        device: where the model runs.

    Raises:
        CheckpointError, TokenizerError: naming the directory and the problem (for "default":
            that the default model is not made yet).
    """
    if str(path) == DEFAULT_MODEL:
        path = default_model_dir()
        if not (path / "config.json").is_file():
            raise CheckpointError(f"lalm's default model is not in {path} yet: run `lalm demo` "
                                  f"once to make it (about 10 minutes on 2 CPU cores)")
    return Pipeline.from_pretrained(path, dtype=dtype, device=device)


def transcribe(path: str | Path, audios: Sequence[AudioSource], language: str = "en",
               options: GenerationOptions | None = None, batch_size: int = 8,
               dtype: str | torch.dtype = "fp32") -> list[GenerationResult]:
    """Load a checkpoint and transcribe clips with it (see `Pipeline.transcribe`)."""
    return load_model(path, dtype).transcribe(audios, language, options, batch_size)
