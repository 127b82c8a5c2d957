"""Save lalm's model in a foreign checkpoint layout that its reference loads.

`save_model(model, dir)` writes the model's own family: a Qwen2-Audio directory (config.json +
safetensors) that `Qwen2AudioForConditionalGeneration.from_pretrained(dir)` reads, or a
Qwen-Audio (v1) directory in the layout of the published QWen code. Every file is written to a
temporary name and renamed; weights go first and config.json last, so a directory with a
config always has complete weights.

A Qwen2-Audio directory also gets what transformers needs around the weights:
``preprocessor_config.json`` (the `WhisperFeatureExtractor` of the model's mel bins, so
``AutoProcessor`` loads) and, given the tokenizer, the special ids (``bos_token_id`` /
``eos_token_id`` in the text config, ``generation_config.json`` with eos ``<|endoftext|>`` and
``<|im_end|>`` as the released Qwen2-Audio-7B-Instruct has them), so that ``generate()``
stops at the end of a turn.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lalm.checkpoint.formats import FORMATS, native_format
from lalm.checkpoint.load import CONFIG_FILE
from lalm.checkpoint.peft import AUDIO_ADAPTER, save_audio_adapter
from lalm.checkpoint.quantized import QUANT_KEY, quantization_config, to_disk
from lalm.checkpoint.safetensors_io import write_checkpoint_dir, write_json
from lalm.config import ModelConfig
from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel
from lalm.tokenizer import Tokenizer, load_tokenizer

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
GENERATION_CONFIG = "generation_config.json"
PREPROCESSOR_CONFIG = "preprocessor_config.json"
# Decoding fields carried from a source checkpoint's generation_config.json into an export
# (its recommended decoding; the special ids always come from the exported tokenizer).
# Files of a checkpoint folder that are weights or written from the model, not tokenizer files.
_NOT_TOKENIZER = ("config.json", "model_config.json", GENERATION_CONFIG, PREPROCESSOR_CONFIG)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".index.json")
_DECODING_FIELDS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                    "num_beams", "length_penalty", "max_new_tokens", "min_new_tokens")


def save_model(
    model: AudioLanguageModel,
    directory: str | Path,
    format: str | None = None,  # noqa: A002 - the user-facing name
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
    tokenizer: Tokenizer | None = None,
    decoding: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write `model` as a checkpoint directory of the given format.

    The tokenizer files themselves are not written here (copy them beside, as
    `lalm.training.build.export` does).

    Args:
        model: the model to save.
        directory: target folder (created if needed; existing files of the same names replaced).
        format: a key of `lalm.checkpoint.formats.FORMATS` that can be written; default: the
            model's own family (`native_format`).
        dtype: cast the weights to this dtype on the way out; default: as they are.
        max_shard_bytes: split the weights into shards of at most this size (plus an index).
        tokenizer: the checkpoint's tokenizer; Qwen2-Audio: its special ids go into
            config.json and generation_config.json (module docstring). None: neither.
        decoding: a source generation_config.json whose decoding fields (do_sample,
            temperature, top_k, top_p, repetition_penalty, ...) the new one keeps.

    Returns:
        The files written, config.json last.

    Raises:
        CheckpointError: unknown or read-only format, or a model the format cannot express.

    A decoder with gated adapters (`lalm.model.lora.gate_adapters`) is written as its base
    weights plus the adapters in PEFT's format (`lalm.checkpoint.peft.AUDIO_ADAPTER`).
    """
    format = format or native_format(model.config)
    fmt = FORMATS.get(format)
    if fmt is None or fmt.from_lalm is None or fmt.config_to_hf is None:
        writable = sorted(name for name, f in FORMATS.items() if f.from_lalm is not None)
        raise CheckpointError(f"cannot save format {format!r}; writable formats: {writable}")
    gated = model.decoder.adapter_gate is not None  # its adapters go to AUDIO_ADAPTER
    state = {name: t if dtype is None or not t.is_floating_point() else t.to(dtype)
             for name, t in model.state_dict().items()  # int8 codes stay int8
             if not (gated and name.startswith("decoder.")
                     and name.endswith((".lora_a", ".lora_b")))}
    if model.config.decoder.tie_embeddings:  # stored once, as the embedding (as HF does)
        del state["decoder.lm_head.weight"]
    weight_dtype = dtype or model.decoder.embed.weight.dtype
    if weight_dtype not in _DTYPE_NAMES:
        raise CheckpointError(f"cannot save weights as {weight_dtype}")
    hf_config = fmt.config_to_hf(model.config, _DTYPE_NAMES[weight_dtype])
    directory = Path(directory)
    quantization = quantization_config(model)
    if quantization is not None:
        hf_config[QUANT_KEY] = quantization
    written = write_checkpoint_dir(to_disk(state, fmt.from_lalm), directory, max_shard_bytes)
    if format in _PROCESSORS:
        written.append(directory / PREPROCESSOR_CONFIG)
        write_json(written[-1], preprocessor_config(model.config, format))
    if format == "qwen2_audio":
        if tokenizer is not None:
            ids = {"bos_token_id": tokenizer.eod_id, "eos_token_id": tokenizer.im_end_id}
            hf_config["text_config"].update(ids)
            hf_config["audio_token_index"] = tokenizer.audio_pad_id  # 151646 in Qwen's BPE
            written.append(directory / GENERATION_CONFIG)
            write_json(written[-1], generation_config(tokenizer, decoding))
    if gated:
        written += save_audio_adapter(model, directory)
    else:  # an earlier save's adapters must not gate this model
        shutil.rmtree(directory / AUDIO_ADAPTER, ignore_errors=True)
    config_path = directory / CONFIG_FILE
    write_json(config_path, hf_config)
    return [*written, config_path]


# format -> (feature extractor, processor) transformers names in preprocessor_config.json
_PROCESSORS = {
    "qwen2_audio": ("WhisperFeatureExtractor", "Qwen2AudioProcessor"),
    "qwen2_5_omni": ("WhisperFeatureExtractor", "Qwen2_5OmniProcessor"),
    "qwen3_asr": ("Qwen3ASRFeatureExtractor", "Qwen3ASRProcessor"),
}


def preprocessor_config(config: ModelConfig, format: str = "qwen2_audio"  # noqa: A002
                        ) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of a Qwen2-Audio, Qwen2.5-Omni or Qwen3-ASR checkpoint
    (transformers' feature extractor of that family) for the model's mel bins."""
    extractor, processor = _PROCESSORS[format]
    extra = {"n_window": config.encoder.n_window} if format == "qwen3_asr" else {}
    return {
        "chunk_length": 30, "feature_extractor_type": extractor,
        "feature_size": config.encoder.n_mels, "hop_length": 160, "n_fft": 400,
        "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
        "padding_value": 0.0, "processor_class": processor,
        "return_attention_mask": True, "sampling_rate": 16000, **extra,
    }


def generation_config(tokenizer: Tokenizer, decoding: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """A ``generation_config.json``: the tokenizer's ids as the released Qwen2-Audio-7B-Instruct
    sets them (bos and pad ``<|endoftext|>``, eos ``<|endoftext|>`` and ``<|im_end|>``), plus
    the decoding fields of ``decoding`` (a source generation_config.json), if any."""
    kept = {k: decoding[k] for k in _DECODING_FIELDS if decoding and k in decoding}
    return {"bos_token_id": tokenizer.eod_id, "eos_token_id": [tokenizer.eod_id,
                                                                tokenizer.im_end_id],
            "pad_token_id": tokenizer.eod_id, **kept}


def read_generation_config(directory: str | Path) -> dict[str, Any] | None:
    """The parsed ``generation_config.json`` of a checkpoint directory; None without one.

    Raises:
        CheckpointError: the file is not readable JSON or not a JSON object.
    """
    path = Path(directory) / GENERATION_CONFIG
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def copy_tokenizer_files(tokenizer_path: str | Path, directory: str | Path) -> list[Path]:
    """Copy the tokenizer files of a folder (or a single tokenizer file) into `directory`:
    everything but weights and the files `save_model` writes from the model."""
    src = Path(tokenizer_path)
    files = [src] if src.is_file() else [
        p for p in sorted(src.iterdir())
        if p.is_file() and p.name not in _NOT_TOKENIZER and not p.name.endswith(_WEIGHT_SUFFIXES)
    ]
    Path(directory).mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(f, Path(directory) / f.name)) for f in files]


def save_with_tokenizer(model: AudioLanguageModel, directory: str | Path,
                        tokenizer_path: str | Path, format: str | None = None,  # noqa: A002
                        dtype: torch.dtype | None = None) -> list[Path]:
    """A complete checkpoint: the tokenizer's files, then `save_model` with the tokenizer's
    ids and the source folder's generation_config.json decoding fields (config.json last).

    Args:
        model: the model.
        directory: target folder.
        tokenizer_path: a tokenizer folder (a checkpoint's) or a single tokenizer file.
        format, dtype: as in `save_model`.

    Returns:
        The files written, config.json last.

    Raises:
        TokenizerError: no tokenizer at ``tokenizer_path``.
        CheckpointError: a tokenizer larger than the model's vocabulary, or as `save_model`.
    """
    tokenizer = load_tokenizer(tokenizer_path)
    if len(tokenizer) > model.config.decoder.vocab_size:
        raise CheckpointError(f"tokenizer {tokenizer_path} has {len(tokenizer)} ids, more than "
                              f"the model's vocab_size {model.config.decoder.vocab_size}")
    source = Path(tokenizer_path)
    decoding = read_generation_config(source) if source.is_dir() else None
    copied = copy_tokenizer_files(source, directory)
    return [*copied, *save_model(model, directory, format, dtype, tokenizer=tokenizer,
                                 decoding=decoding)]
