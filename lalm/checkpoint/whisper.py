"""Whisper encoders from OpenAI ``.pt`` files, Hugging Face folders and CTranslate2 folders.

Each foreign format maps onto lalm's parameter names through a key map (data): foreign name
pattern -> lalm name pattern, ``{}`` standing for the block index, applied in either direction
by `lalm.checkpoint.keymap.KeyMap`. Whisper's final LayerNorm (``ln_post``) maps
to lalm's ``projector.ln_post``: Qwen-Audio models apply it after the stride-2 pool, and their
encoders were initialised from Whisper's.

CTranslate2 stores q/k/v of each block as one fused [3D, D] matrix with a [3D] bias whose key
third is zero (Whisper's key projection has no bias); `CT2_FUSED_QKV` says how it splits.
Weights stored as int8/int16 are dequantized with their ``_scale`` (see
`lalm.checkpoint.ctranslate2_format`), fp16/bf16 ones are cast: a converted encoder is float32
unless asked otherwise.

Entry point: `load_whisper_encoder(path)` -> `WhisperEncoderWeights` (an `EncoderConfig` and a
state dict in lalm's names), whatever the format; any size (tiny ... large-v3,
80 or 128 mel bins).
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lalm.checkpoint import qwen2_audio
from lalm.checkpoint.ctranslate2_format import MAX_BINARY_VERSION, CT2File
from lalm.checkpoint.hf_json import check_kinds, read_json
from lalm.checkpoint.keymap import KeyMap
from lalm.checkpoint.safetensors_io import INDEX_FILE, SINGLE_FILE, read_checkpoint_dir
from lalm.checkpoint.save import save_model, save_with_tokenizer
from lalm.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig
from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel
from lalm.model.encoder import AudioEncoder
from lalm.model.layers import LayerNorm

# --- key maps: foreign name pattern -> lalm name pattern ------------------------------------

#: openai-whisper ``model_state_dict`` (``whisper/model.py`` names, which lalm keeps).
OPENAI_KEYS: dict[str, str] = {
    "encoder.conv1.weight": "encoder.conv1.weight",
    "encoder.conv1.bias": "encoder.conv1.bias",
    "encoder.conv2.weight": "encoder.conv2.weight",
    "encoder.conv2.bias": "encoder.conv2.bias",
    "encoder.positional_embedding": "encoder.positional_embedding",
    "encoder.blocks.{}.attn_ln.weight": "encoder.blocks.{}.attn_ln.weight",
    "encoder.blocks.{}.attn_ln.bias": "encoder.blocks.{}.attn_ln.bias",
    "encoder.blocks.{}.attn.query.weight": "encoder.blocks.{}.attn.query.weight",
    "encoder.blocks.{}.attn.query.bias": "encoder.blocks.{}.attn.query.bias",
    "encoder.blocks.{}.attn.key.weight": "encoder.blocks.{}.attn.key.weight",
    "encoder.blocks.{}.attn.value.weight": "encoder.blocks.{}.attn.value.weight",
    "encoder.blocks.{}.attn.value.bias": "encoder.blocks.{}.attn.value.bias",
    "encoder.blocks.{}.attn.out.weight": "encoder.blocks.{}.attn.out.weight",
    "encoder.blocks.{}.attn.out.bias": "encoder.blocks.{}.attn.out.bias",
    "encoder.blocks.{}.mlp_ln.weight": "encoder.blocks.{}.mlp_ln.weight",
    "encoder.blocks.{}.mlp_ln.bias": "encoder.blocks.{}.mlp_ln.bias",
    "encoder.blocks.{}.mlp.0.weight": "encoder.blocks.{}.mlp.0.weight",
    "encoder.blocks.{}.mlp.0.bias": "encoder.blocks.{}.mlp.0.bias",
    "encoder.blocks.{}.mlp.2.weight": "encoder.blocks.{}.mlp.2.weight",
    "encoder.blocks.{}.mlp.2.bias": "encoder.blocks.{}.mlp.2.bias",
    "encoder.ln_post.weight": "projector.ln_post.weight",
    "encoder.ln_post.bias": "projector.ln_post.bias",
}

#: transformers ``WhisperEncoder`` names, relative to the encoder's prefix (``model.encoder.``
#: in WhisperForConditionalGeneration, ``encoder.`` in WhisperModel). Qwen2-Audio's audio tower
#: is the same module under ``audio_tower.``, so its key map is the single source of the names.
HF_KEYS: dict[str, str] = {
    hf.removeprefix("audio_tower."): ours
    for hf, ours in qwen2_audio.HF_TO_LALM.items() if hf.startswith("audio_tower.")
}

#: CTranslate2 ``WhisperSpec`` variables (except the fused q/k/v, see `CT2_FUSED_QKV`).
CT2_KEYS: dict[str, str] = {
    "encoder/conv1/weight": "encoder.conv1.weight",
    "encoder/conv1/bias": "encoder.conv1.bias",
    "encoder/conv2/weight": "encoder.conv2.weight",
    "encoder/conv2/bias": "encoder.conv2.bias",
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    "encoder/layer_{}/self_attention/layer_norm/gamma": "encoder.blocks.{}.attn_ln.weight",
    "encoder/layer_{}/self_attention/layer_norm/beta": "encoder.blocks.{}.attn_ln.bias",
    "encoder/layer_{}/self_attention/linear_1/weight": "encoder.blocks.{}.attn.out.weight",
    "encoder/layer_{}/self_attention/linear_1/bias": "encoder.blocks.{}.attn.out.bias",
    "encoder/layer_{}/ffn/layer_norm/gamma": "encoder.blocks.{}.mlp_ln.weight",
    "encoder/layer_{}/ffn/layer_norm/beta": "encoder.blocks.{}.mlp_ln.bias",
    "encoder/layer_{}/ffn/linear_0/weight": "encoder.blocks.{}.mlp.0.weight",
    "encoder/layer_{}/ffn/linear_0/bias": "encoder.blocks.{}.mlp.0.bias",
    "encoder/layer_{}/ffn/linear_1/weight": "encoder.blocks.{}.mlp.2.weight",
    "encoder/layer_{}/ffn/linear_1/bias": "encoder.blocks.{}.mlp.2.bias",
    "encoder/layer_norm/gamma": "projector.ln_post.weight",
    "encoder/layer_norm/beta": "projector.ln_post.bias",
}

#: The fused q/k/v variables of block {}: ``encoder/layer_{}/self_attention/linear_0/<suffix>``
#: [3D, ...] splits in equal thirds along dim 0 into these lalm names (under
#: ``encoder.blocks.{}.``); None: that third must be all zero (Whisper's key has no bias).
CT2_FUSED_QKV: dict[str, tuple[str | None, str | None, str | None]] = {
    "weight": ("attn.query.weight", "attn.key.weight", "attn.value.weight"),
    "bias": ("attn.query.bias", None, "attn.value.bias"),
}
_CT2_FUSED = re.compile(r"encoder/layer_(\d+)/self_attention/linear_0/(weight|bias)$")

#: Newest CTranslate2 WhisperSpec revision whose encoder layout lalm knows (revisions 1-3
#: differ only in the decoder).
CT2_WHISPER_REVISION = 3


OPENAI_KEY_MAP = KeyMap(OPENAI_KEYS, "openai-whisper")
HF_KEY_MAP = KeyMap(HF_KEYS, "transformers Whisper encoder")
CT2_KEY_MAP = KeyMap(CT2_KEYS, "CTranslate2 Whisper encoder")


def encoder_keys(n_layer: int) -> list[str]:
    """The lalm state-dict keys a converted Whisper encoder has (encoder.* and ln_post)."""
    keys: list[str] = []
    for name in OPENAI_KEYS.values():
        keys += [name.format(i) for i in range(n_layer)] if "{}" in name else [name]
    return keys


@dataclass
class WhisperEncoderWeights:
    """A Whisper encoder in lalm's terms.

    Attributes:
        config: the encoder architecture (``frame_cutoff`` "lookahead", as Whisper convolves).
        state_dict: ``encoder.*`` and ``projector.ln_post.*`` tensors in lalm's names, e.g.
            ``encoder.conv1.weight`` [D, n_mels, 3], ``encoder.positional_embedding`` [n_ctx, D].
        source: the format read: "openai", "hf" or "ctranslate2".
    """

    config: EncoderConfig
    state_dict: dict[str, Tensor]
    source: str


def _finish(config: EncoderConfig, state: dict[str, Tensor], source: str,
            path: Path, dtype: torch.dtype) -> WhisperEncoderWeights:
    """Check completeness and shapes, cast to ``dtype``."""
    expected = encoder_keys(config.n_layer)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} Whisper encoder weights missing, e.g. "
                              f"{missing[:3]}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: weights for blocks beyond n_layer={config.n_layer}, "
                              f"e.g. {extra[:3]}")
    d = config.dim
    shapes = {
        "encoder.conv1.weight": (d, config.n_mels, 3),
        "encoder.conv2.weight": (d, d, 3),
        "encoder.positional_embedding": (config.n_ctx, d),
        "encoder.blocks.0.mlp.0.weight": (config.hidden_dim, d),
        "encoder.blocks.0.attn.query.weight": (d, d),
    }
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(state[key].shape)}, the "
                                  f"config implies {shape}")
    cast = {k: state[k].to(dtype).contiguous() for k in expected}
    return WhisperEncoderWeights(config, cast, source)


def _encoder_config(path: Path, **fields: int) -> EncoderConfig:
    try:
        return EncoderConfig(**fields, frame_cutoff="lookahead")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid Whisper encoder: {e}") from e


def read_openai(path: Path, dtype: torch.dtype = torch.float32) -> WhisperEncoderWeights:
    """Read an openai-whisper checkpoint (``{"dims": ..., "model_state_dict": ...}``).

    Loaded with ``torch.load(weights_only=True)``: no code in the file runs.
    """
    try:
        ckpt = _torch_load(path)
    except Exception as e:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a loadable openai-whisper .pt file: {e}") from e
    if not isinstance(ckpt, dict) or not {"dims", "model_state_dict"} <= set(ckpt):
        found = sorted(map(str, ckpt))[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: an openai-whisper file holds 'dims' and "
                              f"'model_state_dict'; found {found}")
    dims, weights = ckpt["dims"], ckpt["model_state_dict"]
    try:
        config = _encoder_config(
            path, n_mels=dims["n_mels"], n_ctx=dims["n_audio_ctx"], dim=dims["n_audio_state"],
            n_head=dims["n_audio_head"], n_layer=dims["n_audio_layer"],
            hidden_dim=weights["encoder.blocks.0.mlp.0.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"{path}: openai-whisper dims/weights lack {e}") from e
    encoder = {k: v for k, v in weights.items() if k.startswith("encoder.")}
    state = OPENAI_KEY_MAP.convert(encoder)
    return _finish(config, state, "openai", path, dtype)


def _torch_load(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True`` (no code in the file runs), memory-mapped when
    the file is a zip archive (every torch >= 1.6 file; legacy pickles cannot be mapped)."""
    return torch.load(path, map_location="cpu", weights_only=True,
                      mmap=zipfile.is_zipfile(path))


def _hf_tensors(folder: Path) -> dict[str, Tensor]:
    """Encoder tensors of an HF folder, keyed relative to the encoder prefix."""
    if (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file():
        tensors = read_checkpoint_dir(folder)
    elif (folder / "pytorch_model.bin").is_file():
        try:
            tensors = _torch_load(folder / "pytorch_model.bin")
        except Exception as e:  # torch raises many types for a bad file
            raise CheckpointError(f"{folder / 'pytorch_model.bin'}: not loadable: {e}") from e
    else:
        raise CheckpointError(f"{folder}: no {SINGLE_FILE}, {INDEX_FILE} or pytorch_model.bin")
    prefixes = ["model.encoder.", "encoder."]  # WhisperForConditionalGeneration, WhisperModel
    for p in prefixes:
        found = {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
        if found:
            return found
    raise CheckpointError(f"{folder}: no Whisper encoder weights under {prefixes}")


def read_hf(folder: Path, dtype: torch.dtype = torch.float32) -> WhisperEncoderWeights:
    """Read a transformers Whisper folder (``config.json`` + safetensors, sharded or not, or
    ``pytorch_model.bin``) of a WhisperForConditionalGeneration or WhisperModel."""
    config_file = folder / "config.json"
    hf = read_json(config_file) if config_file.is_file() else None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: missing, or not a JSON object")
    check_kinds(hf, {"num_mel_bins": int, "max_source_positions": int, "d_model": int,
                     "encoder_attention_heads": int, "encoder_layers": int,
                     "encoder_ffn_dim": int, "activation_function": str}, "", str(config_file))
    try:
        if hf.get("activation_function", "gelu") != "gelu":
            raise CheckpointError(f"{config_file}: activation {hf['activation_function']!r}; "
                                  f"lalm's Whisper encoder uses exact gelu")
        config = _encoder_config(
            folder, n_mels=hf["num_mel_bins"], n_ctx=hf["max_source_positions"],
            dim=hf["d_model"], n_head=hf["encoder_attention_heads"],
            n_layer=hf["encoder_layers"], hidden_dim=hf["encoder_ffn_dim"])
    except KeyError as e:
        raise CheckpointError(f"{config_file}: not a Whisper config (no {e})") from e
    state = HF_KEY_MAP.convert(_hf_tensors(folder))
    return _finish(config, state, "hf", folder, dtype)


def read_ctranslate2(path: Path, dtype: torch.dtype = torch.float32) -> WhisperEncoderWeights:
    """Read the encoder of a CTranslate2 Whisper model (folder or its ``model.bin``).

    int8 weights are dequantized with their per-row scales and int16 ones with their scalar
    scale, so the result equals what CTranslate2 computes with in float32 mode.
    """
    ct2 = CT2File(path)
    try:
        if ct2.spec != "WhisperSpec":
            raise CheckpointError(f"{ct2.path}: spec {ct2.spec!r} is not a Whisper model")
        if ct2.spec_revision > CT2_WHISPER_REVISION:
            raise CheckpointError(f"{ct2.path}: WhisperSpec revision {ct2.spec_revision} is "
                                  f"newer than lalm knows ({CT2_WHISPER_REVISION})")
        for needed in ("encoder/conv1/weight", "encoder/position_encodings/encodings",
                       "encoder/num_heads", "encoder/layer_0/ffn/linear_0/weight"):
            if needed not in ct2:
                raise CheckpointError(f"{ct2.path}: variable {needed!r} is missing")
        dim, n_mels, _ = ct2.shape("encoder/conv1/weight")
        layers = {int(m.group(1)) for n in ct2 if (m := re.match(r"encoder/layer_(\d+)/", n))}
        config = _encoder_config(
            ct2.path, n_mels=n_mels, n_ctx=ct2.shape("encoder/position_encodings/encodings")[0],
            dim=dim, n_head=int(ct2["encoder/num_heads"]), n_layer=len(layers),
            hidden_dim=ct2.shape("encoder/layer_0/ffn/linear_0/weight")[0])
        state = _ct2_encoder_state(ct2)
    finally:
        ct2.close()
    return _finish(config, state, "ctranslate2", ct2.path, dtype)


def _ct2_encoder_state(ct2: CT2File) -> dict[str, Tensor]:
    """Every encoder variable, dequantized to float32 and renamed (fused q/k/v split)."""
    plain: dict[str, Tensor] = {}
    state: dict[str, Tensor] = {}
    for name in ct2:
        if (not name.startswith("encoder/") or name == "encoder/num_heads"
                or name.endswith(("_scale", "_zero"))):
            continue
        fused = _CT2_FUSED.match(name)
        if fused is None:
            plain[name] = ct2.dequantized(name)
            continue
        value = ct2.dequantized(name)
        if value.shape[0] % 3:
            raise CheckpointError(f"{ct2.path}: fused {name!r} has {value.shape[0]} rows, "
                                  f"not 3 x width")
        block, suffix = fused.groups()
        for part, dst in zip(value.chunk(3, dim=0), CT2_FUSED_QKV[suffix]):
            if dst is not None:
                state[f"encoder.blocks.{block}.{dst}"] = part
            elif part.count_nonzero():
                raise CheckpointError(f"{ct2.path}: {name!r} has a non-zero key bias; Whisper's "
                                      f"key projection has none")
    state.update(CT2_KEY_MAP.convert(plain))
    return state


def load_whisper_encoder(path: str | Path,
                         dtype: torch.dtype = torch.float32) -> WhisperEncoderWeights:
    """Read a Whisper encoder from any of the three formats, detected from the path.

    * a folder with ``model.bin`` (CTranslate2; also the ``model.bin`` file itself),
    * a folder with ``config.json`` and safetensors / ``pytorch_model.bin`` (transformers),
    * a ``.pt`` file (openai-whisper).

    Args:
        path: file or folder.
        dtype: dtype of the returned tensors (float32 by default, whatever was stored).

    Returns:
        `WhisperEncoderWeights` in lalm's names.

    Raises:
        CheckpointError: nothing there, an unknown format, or a malformed/incomplete checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model.bin").is_file():
            return read_ctranslate2(path, dtype)
        if (path / "config.json").is_file():
            return read_hf(path, dtype)
        raise CheckpointError(f"{path}: neither a CTranslate2 (model.bin) nor a transformers "
                              f"(config.json) Whisper folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such Whisper checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return read_openai(path, dtype)
    if len(head) == 4 and 1 <= int.from_bytes(head, "little") <= MAX_BINARY_VERSION:
        return read_ctranslate2(path, dtype)
    raise CheckpointError(f"{path}: unknown Whisper checkpoint format (not a torch .pt, not a "
                          f"CTranslate2 model.bin)")


def build_whisper_encoder(weights: WhisperEncoderWeights) -> tuple[AudioEncoder, LayerNorm]:
    """lalm modules that compute Whisper's encoder from converted weights.

    Whisper's encoder output is ``ln_post(encoder(features))`` on every position (Qwen-Audio
    models instead pool first, then apply ``ln_post``).

    Args:
        weights: from `load_whisper_encoder`.

    Returns:
        (encoder, ln_post): an `AudioEncoder` and the final `LayerNorm`, in eval mode, holding
        the weights' tensors (dtype and device as given).
    """
    with torch.device("meta"):
        encoder = AudioEncoder(weights.config)
        ln_post = LayerNorm(weights.config.dim, eps=ProjectorConfig().norm_eps)
    state = weights.state_dict
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()
                             if k.startswith("encoder.")}, assign=True)
    ln_post.load_state_dict({k.removeprefix("projector.ln_post."): v for k, v in state.items()
                             if k.startswith("projector.ln_post.")}, assign=True)
    return encoder.eval(), ln_post.eval()


def init_fresh(params: list[tuple[str, Tensor]], seed: int, init_std: float) -> None:
    """Initialise new parameters for training as Qwen2 models are: weights ~ N(0, init_std),
    biases 0, norm weights 1, deterministically from ``seed`` (in the order given).

    Args:
        params: (lalm name, parameter) pairs, e.g. ``model.projector.named_parameters(...)``.
        seed: seed of the random weights.
        init_std: their standard deviation.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in params:
            if name.endswith("norm.weight") or name == "projector.ln_post.weight":
                param.fill_(1.0)
            elif name.endswith(".bias"):
                param.zero_()
            else:
                param.normal_(0.0, init_std, generator=generator)


def build_from_whisper(
    whisper_path: str | Path,
    decoder_config: DecoderConfig,
    out_dir: str | Path,
    *,
    seed: int = 0,
    init_std: float = 0.02,
    dtype: torch.dtype | None = None,
    tokenizer: str | Path | None = None,
) -> list[Path]:
    """Write a fresh audio-language model: a real Whisper encoder and a new random decoder.

    The result is a Qwen2-Audio checkpoint folder (what transformers'
    ``Qwen2AudioForConditionalGeneration`` and `lalm.checkpoint.load.load_model` read): the
    encoder and ``ln_post`` come from the Whisper checkpoint (any format `load_whisper_encoder`
    reads); the projector's Linear and the decoder are initialised for training as Qwen2 models
    are (weights ~ N(0, ``init_std``), biases 0, norm weights 1), deterministically from
    ``seed``.

    Args:
        whisper_path: Whisper checkpoint (CTranslate2 folder, transformers folder, OpenAI .pt).
        decoder_config: size of the new decoder (vocabulary, width, layers, heads ...).
        out_dir: destination folder.
        seed: seed of the new weights.
        init_std: standard deviation of the new weights.
        dtype: dtype written (default float32).
        tokenizer: a tokenizer folder (or file) whose files go beside the weights, with the
            processor and generation config (`lalm.checkpoint.save.save_with_tokenizer`), so
            that ``lalm chat`` and transformers' ``AutoProcessor`` open the folder; None: the
            weights and config only (add the tokenizer when training, as ``lalm demo`` does).

    Returns:
        The files written, config.json last.

    Raises:
        CheckpointError: the Whisper checkpoint cannot be read, or the tokenizer has more ids
            than ``decoder_config.vocab_size``.
        TokenizerError: no tokenizer at ``tokenizer``.
    """
    weights = load_whisper_encoder(whisper_path)
    config = ModelConfig(encoder=weights.config, projector=ProjectorConfig(),
                         decoder=decoder_config)
    model = AudioLanguageModel(config)
    init_fresh([*model.projector.named_parameters(prefix="projector"),
                *model.decoder.named_parameters(prefix="decoder")], seed, init_std)
    model.load_state_dict(weights.state_dict, strict=False)
    if tokenizer is None:
        return save_model(model, out_dir, format="qwen2_audio", dtype=dtype or torch.float32)
    return save_with_tokenizer(model, out_dir, tokenizer, "qwen2_audio",
                               dtype or torch.float32)
