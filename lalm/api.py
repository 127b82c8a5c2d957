"""lalm's public entry points: load a checkpoint as a `Pipeline`, run it on audio and text.

    import lalm
    from lalm.subtitles import format_srt, transcript_cues
    pipe = lalm.load_model("Qwen2-Audio-7B-Instruct")           # precision="auto"
    print(pipe.chat("What is in this clip?", audios=["a.wav"], max_new_tokens=64).text)
    print(pipe.chat([{"role": "user", "content": [{"type": "audio", "audio_url": "a.wav"},
                                                  {"type": "text", "text": "And now?"}]}]).text)
    for result in pipe.transcribe(["a.wav", "b.flac"], batch_size=8):
        print(result.parsed.text)
    for t in pipe.transcribe_segments(["talk.wav"]):     # subtitles, as the server's srt
        Path("talk.srt").write_text(format_srt(transcript_cues(t.segments)))

A pipeline decodes with the checkpoint's generation_config.json (as transformers does) unless
a call passes ``options`` (a `GenerationOptions` or a dict of its fields) or keyword fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lalm.assets import DEFAULT_MODEL, default_model_dir
from lalm.errors import CheckpointError
from lalm.generation import GenerationOptions, GenerationResult, Pipeline
from lalm.generation.pipeline import LongForm, check_transcription_options
from lalm.longform import DEFAULT_OVERLAP_S
from lalm.prompt import AudioSource
from lalm.tokenizer import load_tokenizer


def load_model(path: str | Path, precision: str | torch.dtype | None = "auto",
               device: str | torch.device = "cpu", *,
               dtype: str | torch.dtype | None = None) -> Pipeline:
    """Load a checkpoint directory: model, tokenizer and prompt family in one `Pipeline`.

    Args:
        path: a Hugging Face directory of a known family (Qwen2-Audio, Qwen-Audio, Qwen2.5-Omni,
            Qwen3-ASR: config.json, safetensors, tokenizer files),
            or ``"default"``: lalm's default model in the cache (``lalm demo`` makes it once,
            in about 10 minutes on 2 CPU cores; `lalm.demo.ensure_default_model` from Python).
        precision: "auto" (the checkpoint's storage dtype: a bf16 download stays bf16 in
            memory) | "fp32" | "bf16" | "fp16" | "int8" | "int4" (a weight-only int8 / int4
            decoder). Where
            the device has no fast kernels for the weight dtype (bf16 on a CPU without bf16
            units), the weights keep it and the products compute in float32
            (`lalm.config.resolve_precision`; docs/precision.md).
        device: where the model runs.
        dtype: the former name of ``precision``.

    Returns:
        The pipeline; its default decoding options come from the checkpoint's
        generation_config.json as transformers reads it (`Pipeline.from_pretrained`).

    Raises:
        CheckpointError, TokenizerError: naming the directory and the problem (for "default":
            that the default model is not made yet).
    """
    return Pipeline.from_pretrained(_resolve(path), precision, device, dtype=dtype)


def _resolve(path: str | Path) -> Path:
    if str(path) != DEFAULT_MODEL:
        return Path(path)
    path = default_model_dir()
    if not (path / "config.json").is_file():
        raise CheckpointError(f"lalm's default model is not in {path} yet: run `lalm demo` "
                              f"once to make it (about 10 minutes on 2 CPU cores)")
    return path


def check_transcription(path: str | Path, *, timestamps: bool = False,
                        long_form: LongForm = "vad", overlap_s: float = DEFAULT_OVERLAP_S) -> None:
    """Check transcription options against a checkpoint from its config.json and tokenizer
    (whose family says whether timestamps exist), before the weights load
    (`lalm.generation.pipeline.check_transcription_options`).

    Raises:
        CheckpointError: no readable config.json.
        TokenizerError: no readable tokenizer files.
        PromptError: ``timestamps`` on a checkpoint without timestamp tags (Qwen2-Audio).
        AudioError: a bad ``long_form`` / ``overlap_s``.
    """
    from lalm.checkpoint import load_config

    directory = _resolve(path)
    family = load_tokenizer(directory, load_config(directory)[1].family).family
    check_transcription_options(family, timestamps, long_form, overlap_s)


def transcribe(path: str | Path, audios: Sequence[AudioSource], language: str = "en",
               options: GenerationOptions | dict[str, Any] | None = None, batch_size: int = 8,
               precision: str | torch.dtype | None = "auto", *,
               dtype: str | torch.dtype | None = None, timestamps: bool = False,
               long_form: LongForm = "vad", overlap_s: float = DEFAULT_OVERLAP_S,
               **fields: Any) -> list[GenerationResult]:
    """Load a checkpoint and transcribe clips with it (see `Pipeline.transcribe`); the options
    are checked (`check_transcription`) before the weights load."""
    check_transcription(path, timestamps=timestamps, long_form=long_form, overlap_s=overlap_s)
    pipe = load_model(path, precision, dtype=dtype)
    return pipe.transcribe(audios, language, options, batch_size, timestamps=timestamps,
                           long_form=long_form, overlap_s=overlap_s, **fields)
