"""Architecture configuration: one `ModelConfig` = encoder + projector + decoder sub-configs.

Both checkpoint families (Qwen-Audio v1 and Qwen2-Audio) are the same computation; the few
places where they differ are switches here (`EncoderConfig.frame_cutoff`,
`ProjectorConfig.audio_bos_eos`, `DecoderConfig.dynamic_ntk` / `logn_attn`, widths, eps, vocab);
decoders of other LLM families (Llama, Qwen3: `lalm.checkpoint.gguf`) switch `qkv_bias`,
`qk_norm` and `head_width`. Qwen2.5-Omni's thinker adds a windowed encoder
(`EncoderConfig.n_window`) and M-RoPE sections (`DecoderConfig.mrope_section`); Qwen3-ASR a
conv2d encoder stem (`EncoderConfig.stem`), a key bias, an MLP projector (`ProjectorConfig.kind`)
and tied embeddings.
Presets are named real architectures plus tiny random ones derived from them for tests.
`resolve_precision` turns the user's precision option into weight and compute dtypes.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lalm.errors import ConfigError, PrecisionError

FrameCutoff = Literal["lookahead", "pairs"]
EncoderStem = Literal["conv1d", "conv2d"]
ProjectorKind = Literal["pool", "mlp"]


@dataclass
class EncoderConfig:
    """Whisper-style audio encoder (conv stem, sinusoidal positions, pre-LN blocks)."""

    n_mels: int = 128  # mel bins of the input features (Qwen2-Audio 128, Qwen-Audio v1 80)
    n_ctx: int = 1500  # positions after the stride-2 conv stem (30 s of audio)
    dim: int = 1280  # model width (Whisper n_state)
    n_head: int = 20  # attention heads
    n_layer: int = 32  # transformer blocks
    hidden_dim: int = 5120  # MLP width (4 * dim in every released checkpoint)
    norm_eps: float = 1e-5  # LayerNorm eps (PyTorch default in both families)
    # Which mel frames the conv stem may see after a clip's real length L: "lookahead" keeps
    # frames < L + 2 (Qwen2-Audio: the reference convolves its 30 s pad), "pairs" keeps frames
    # < 2 * n with n = (L - 1) // 2 + 1 (Qwen-Audio v1: the reference cuts before conv1).
    # (Whole-clip encoders only; a windowed encoder sees zeros from frame L on.)
    frame_cutoff: FrameCutoff = "lookahead"
    # Windowed encoders (Qwen2.5-Omni, Qwen3-ASR): each clip is cut into chunks of 2 * n_window
    # mel frames, the stem runs on each chunk alone, positions restart at 0 in every chunk and a
    # position attends only within its window of `window_chunks` chunks. None: the whole clip.
    n_window: int | None = None
    window_chunks: int = 1  # chunks per attention window (Qwen3-ASR: n_window_infer // chunk)
    # "conv1d": Whisper's conv1 (k3 s1) + conv2 (k3 s2); "conv2d" (Qwen3-ASR): three k3 s2
    # Conv2d over (mel, time) with `stem_channels` channels, then a Linear `conv_out` to dim.
    stem: EncoderStem = "conv1d"
    stem_channels: int = 480  # Conv2d channels of the "conv2d" stem (downsample_hidden_size)
    key_bias: bool = False  # attention `key` projection has a bias (Qwen3-ASR; Whisper: none)

    def __post_init__(self) -> None:
        _check_heads("encoder", self.dim, self.n_head, self.n_head)
        if self.frame_cutoff not in ("lookahead", "pairs"):
            raise ConfigError(
                f"encoder.frame_cutoff must be 'lookahead' or 'pairs', got {self.frame_cutoff!r}"
            )
        if self.stem not in ("conv1d", "conv2d"):
            raise ConfigError(f"encoder.stem must be 'conv1d' or 'conv2d', got {self.stem!r}")
        if self.stem == "conv2d" and self.n_window is None:
            raise ConfigError("encoder.stem 'conv2d' needs encoder.n_window (it runs per chunk)")
        if self.n_window is not None:
            _check_positive("encoder", n_window=self.n_window, window_chunks=self.window_chunks)
        _check_positive("encoder", stem_channels=self.stem_channels)
        _check_positive("encoder", n_mels=self.n_mels, n_ctx=self.n_ctx, n_layer=self.n_layer,
                        hidden_dim=self.hidden_dim)


@dataclass
class ProjectorConfig:
    """Encoder rows -> decoder width: "pool" = stride-2 average pool, LayerNorm (`ln_post`),
    Linear `proj` (Qwen-Audio, Qwen2-Audio, Qwen2.5-Omni); "mlp" = `ln_post`, Linear `hidden`,
    GELU, Linear `proj`, one row per encoder position (Qwen3-ASR)."""

    audio_bos_eos: bool = False  # learned [2, out_dim] rows framing each clip (Qwen-Audio v1)
    norm_eps: float = 1e-5  # eps of ln_post
    kind: ProjectorKind = "pool"

    def __post_init__(self) -> None:
        if self.kind not in ("pool", "mlp"):
            raise ConfigError(f"projector.kind must be 'pool' or 'mlp', got {self.kind!r}")


@dataclass
class DecoderConfig:
    """Qwen-style decoder LLM: RMSNorm, RoPE, SwiGLU, GQA, untied lm_head; switches for q/k/v
    bias (Qwen2, v1; not Llama, Qwen3), q/k RMSNorm and a free head width (Qwen3)."""

    vocab_size: int = 156032  # rows of the embedding and of lm_head (may exceed the tokenizer)
    dim: int = 4096  # model width
    n_layer: int = 32  # decoder blocks
    n_head: int = 32  # query heads
    n_kv_head: int = 32  # key/value heads (== n_head: plain multi-head attention)
    hidden_dim: int = 11008  # SwiGLU width
    norm_eps: float = 1e-5  # RMSNorm eps
    rope_theta: float = 10000.0  # RoPE base
    max_seq_len: int = 8192  # longest sequence a KV cache is set up for by default
    qkv_bias: bool = True  # q/k/v projections carry a bias (o never does); Llama, Qwen3: none
    qk_norm: bool = False  # RMSNorm over each query and key head before RoPE (Qwen3)
    head_width: int | None = None  # one attention head's width; None: dim // n_head (Qwen3: 128)
    # Qwen-Audio v1: past `train_seq_len` tokens, dynamic NTK raises the RoPE base (alpha chosen
    # once, at prefill, per row) and logn attention scales queries past it.
    dynamic_ntk: bool = False  # scale the RoPE base for prefills longer than train_seq_len
    logn_attn: bool = False  # scale queries past train_seq_len by log(p + 1) / log(train_seq_len)
    train_seq_len: int = 2048  # the length dynamic NTK and logn attention are relative to
    tie_embeddings: bool = False  # lm_head shares the embedding's weight (Qwen3-ASR)
    # M-RoPE (Qwen2.5-Omni): the head's frequency pairs split into these sections (sum
    # head_dim // 2), each rotated by its own position row (time, height, width). Text and audio
    # positions are equal in all three rows, which is plain RoPE. None: 1-D RoPE only.
    mrope_section: list[int] | None = None

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_width or self.dim // self.n_head

    def __post_init__(self) -> None:
        # with an explicit head width, q projects dim -> n_head * head_width (need not be dim)
        _check_heads("decoder", self.n_head if self.head_width else self.dim, self.n_head,
                     self.n_kv_head)
        if self.head_width is not None and self.head_width <= 0:
            raise ConfigError(f"decoder.head_width must be positive, got {self.head_width}")
        if self.head_dim % 2:
            raise ConfigError(f"decoder head_dim must be even for RoPE, got {self.head_dim}")
        if self.mrope_section is not None and (
                len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2
                or min(self.mrope_section) < 0):
            raise ConfigError(f"decoder.mrope_section must be 3 sizes summing to head_dim // 2 = "
                             f"{self.head_dim // 2}, got {self.mrope_section}")
        _check_positive("decoder", vocab_size=self.vocab_size, n_layer=self.n_layer,
                        hidden_dim=self.hidden_dim, max_seq_len=self.max_seq_len,
                        train_seq_len=self.train_seq_len, rope_theta=self.rope_theta)


@dataclass
class ModelConfig:
    """The whole audio-language model."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown sections or fields raise ConfigError naming them."""
        unknown = set(data) - {"encoder", "projector", "decoder"}
        if unknown:
            raise ConfigError(f"unknown model config sections: {sorted(unknown)}")
        return cls(
            encoder=_build(EncoderConfig, "encoder", data.get("encoder", {})),
            projector=_build(ProjectorConfig, "projector", data.get("projector", {})),
            decoder=_build(DecoderConfig, "decoder", data.get("decoder", {})),
        )

    def to_file(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a config written by `to_file`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_name(cls, name: str, **overrides: dict[str, Any]) -> ModelConfig:
        """A preset, optionally with per-section overrides.

        Example: ``ModelConfig.from_name("qwen2-audio-7b", decoder={"n_layer": 2, "dim": 64})``.

        Raises:
            KeyError: unknown preset name (the message lists the known ones).
        """
        if name not in PRESETS:
            raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
        data = copy.deepcopy(PRESETS[name])
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)
        return cls.from_dict(data)

    def replace(self, **sections: dict[str, Any]) -> ModelConfig:
        """A copy with some fields changed: ``cfg.replace(decoder={"n_layer": 1})``."""
        return ModelConfig(
            **{
                name: replace(getattr(self, name), **sections.get(name, {}))
                for name in ("encoder", "projector", "decoder")
            }
        )


def _build(cls: type, section: str, values: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {section} config fields: {sorted(unknown)}")
    return cls(**values)


def _check_heads(section: str, dim: int, n_head: int, n_kv_head: int) -> None:
    if n_head <= 0 or n_kv_head <= 0 or dim <= 0:
        raise ConfigError(f"{section}: dim, n_head and n_kv_head must be positive")
    if dim % n_head:
        raise ConfigError(f"{section}.dim ({dim}) must be divisible by {section}.n_head ({n_head})")
    if n_head % n_kv_head:
        raise ConfigError(
            f"{section}.n_head ({n_head}) must be divisible by {section}.n_kv_head ({n_kv_head})"
        )


def _check_positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}")


_QWEN2_AUDIO_7B: dict[str, dict[str, Any]] = {
    "encoder": {"n_mels": 128, "n_ctx": 1500, "dim": 1280, "n_head": 20, "n_layer": 32,
                "hidden_dim": 5120, "frame_cutoff": "lookahead"},
    "projector": {"audio_bos_eos": False},
    "decoder": {"vocab_size": 156032, "dim": 4096, "n_layer": 32, "n_head": 32, "n_kv_head": 32,
                "hidden_dim": 11008, "norm_eps": 1e-5, "rope_theta": 10000.0,
                "max_seq_len": 8192},
}
_QWEN_AUDIO_7B: dict[str, dict[str, Any]] = {
    "encoder": {"n_mels": 80, "n_ctx": 1500, "dim": 1280, "n_head": 20, "n_layer": 32,
                "hidden_dim": 5120, "frame_cutoff": "pairs"},
    "projector": {"audio_bos_eos": True},
    "decoder": {"vocab_size": 155947, "dim": 4096, "n_layer": 32, "n_head": 32, "n_kv_head": 32,
                "hidden_dim": 11008, "norm_eps": 1e-5, "rope_theta": 10000.0,
                "max_seq_len": 8192, "dynamic_ntk": True, "logn_attn": True,
                "train_seq_len": 2048},
}
_QWEN2_5_OMNI_7B: dict[str, dict[str, Any]] = {  # the thinker's audio and text parts
    "encoder": {"n_mels": 128, "n_ctx": 1500, "dim": 1280, "n_head": 20, "n_layer": 32,
                "hidden_dim": 5120, "n_window": 100},
    "projector": {},
    "decoder": {"vocab_size": 152064, "dim": 3584, "n_layer": 28, "n_head": 28, "n_kv_head": 4,
                "hidden_dim": 18944, "norm_eps": 1e-6, "rope_theta": 1000000.0,
                "max_seq_len": 32768, "mrope_section": [16, 24, 24]},
}
_QWEN3_ASR_0_6B: dict[str, dict[str, Any]] = {
    "encoder": {"n_mels": 128, "n_ctx": 13, "dim": 896, "n_head": 14, "n_layer": 18,
                "hidden_dim": 3584, "n_window": 50, "window_chunks": 8, "stem": "conv2d",
                "stem_channels": 480, "key_bias": True},
    "projector": {"kind": "mlp"},
    "decoder": {"vocab_size": 151936, "dim": 1024, "n_layer": 28, "n_head": 16, "n_kv_head": 8,
                "hidden_dim": 3072, "norm_eps": 1e-6, "rope_theta": 1000000.0,
                "max_seq_len": 65536, "qkv_bias": False, "qk_norm": True, "head_width": 128,
                "tie_embeddings": True},
}
_TINY_ENCODER = {"dim": 64, "n_head": 4, "n_layer": 2, "hidden_dim": 256}
_TINY_DECODER = {"vocab_size": 512, "dim": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2,
                 "hidden_dim": 176, "max_seq_len": 512}


def _derive(
    base: dict[str, dict[str, Any]], **sections: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    out = copy.deepcopy(base)
    for section, values in sections.items():
        out[section].update(values)
    return out


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "qwen2-audio-7b": _QWEN2_AUDIO_7B,  # Qwen/Qwen2-Audio-7B and -7B-Instruct
    "qwen-audio-7b": _QWEN_AUDIO_7B,  # Qwen/Qwen-Audio and Qwen-Audio-Chat (v1)
    # Tiny random models for tests: the real presets shrunk, every switch kept.
    "tiny-random": _derive(_QWEN2_AUDIO_7B, encoder=_TINY_ENCODER, decoder=_TINY_DECODER),
    "tiny-random-v1": _derive(_QWEN_AUDIO_7B, encoder=_TINY_ENCODER,
                              decoder={**_TINY_DECODER, "n_kv_head": 4, "train_seq_len": 64}),
    "qwen2.5-omni-7b": _QWEN2_5_OMNI_7B,  # Qwen/Qwen2.5-Omni-7B's thinker (audio + text)
    "qwen3-asr-0.6b": _QWEN3_ASR_0_6B,  # Qwen/Qwen3-ASR-0.6B
    "tiny-random-omni": _derive(_QWEN2_5_OMNI_7B, encoder={**_TINY_ENCODER, "n_window": 8},
                                decoder={**_TINY_DECODER, "mrope_section": [2, 3, 3]}),
    "tiny-random-asr": _derive(_QWEN3_ASR_0_6B,
                               encoder={**_TINY_ENCODER, "window_chunks": 2, "stem_channels": 8},
                               decoder={**_TINY_DECODER, "head_width": 32}),
}

DtypeName = Literal["fp32", "bf16", "fp16"]
#: What a user asks for: "auto" (the checkpoint's own dtype), or a weight dtype.
PrecisionName = Literal["auto", "fp32", "bf16", "fp16", "int8", "int4"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8", "int4")
#: The precisions that are "auto" plus a weight-only quantised decoder (`lalm.model.quant`).
QUANT_SCHEMES: tuple[str, ...] = ("int8", "int4")
_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


@dataclass(frozen=True)
class Precision:
    """How a model is held and computed.

    Attributes:
        quant: None, or "int8" / "int4": quantise the decoder's Linear layers and lm_head to
            that weight-only scheme after loading (`lalm.model.quant.quantize_model`); the
            rest as `weights`.
        weights: dtype of the floating-point weights in memory (what loading keeps or casts to).
        compute: dtype of activations and matrix products: `weights` where the device has
            fast kernels for it, else float32 (the weights stay `weights` in memory and each
            product upcasts them just in time: `lalm.model.upcast`).
    """

    weights: torch.dtype
    compute: torch.dtype
    quant: str | None = None  # "int8" | "int4": then quantise the decoder after loading

    @property
    def upcast(self) -> bool:
        """Whether weights are stored narrower than they are computed."""
        return self.weights != self.compute


def fast_on(dtype: torch.dtype, device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes matrix products in `dtype` well: float32 always; on CPU bf16
    and fp16 only with the units oneDNN reports (AMX / AVX512-BF16 / AVX512-FP16; without them
    a bf16 product runs ~100x slower than fp32, fp16 has no fast kernel); on CUDA bf16 where
    the GPU supports it (Ampere and later), fp16 always; other devices (and CUDA in a
    build or machine without it, where moving the model fails anyway) are trusted."""
    kind = torch.device(device).type
    if dtype == torch.float32:
        return True
    if kind == "cpu":
        mkldnn = torch.ops.mkldnn
        return bool(mkldnn._is_mkldnn_bf16_supported() if dtype == torch.bfloat16
                    else mkldnn._is_mkldnn_fp16_supported())
    if kind == "cuda" and dtype == torch.bfloat16 and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return True


def resolve_precision(name: str | torch.dtype | None, device: str | torch.device = "cpu",
                      stored: torch.dtype = torch.float32) -> Precision:
    """The weight and compute dtypes for a precision option, a device and a checkpoint.

    "auto" keeps the checkpoint's storage dtype (`stored`; a float64 file is held as float32);
    "int8" / "int4" are "auto" plus that weight-only scheme for the decoder (`Precision.quant`);
    "fp32" / "bf16" / "fp16" (or "float32" / ..., or a torch dtype) hold the weights in that
    dtype. Either way the products run in the weight dtype where the device is fast at it
    (`fast_on`), else in float32 over just-in-time upcast weights, with a warning: a bf16
    checkpoint on a CPU without bf16 units keeps its bf16 bytes and computes in float32.

    Args:
        name: the option; None means "auto".
        device: where the model will run.
        stored: the dtype of the checkpoint's floating-point weights.

    Returns:
        The resolved `Precision`.

    Raises:
        PrecisionError: an unknown precision name (the message lists the known ones).
    """
    quant = name if isinstance(name, str) and name in QUANT_SCHEMES else None
    weights = _weight_dtype("auto" if quant else name, stored)
    if fast_on(weights, device):
        return Precision(weights, weights, quant)
    warnings.warn(
        f"{weights} matrix products are slow on {device} (no {weights} units): the weights "
        f"stay {weights} in memory and each product computes in float32",
        stacklevel=2,
    )
    return Precision(weights, torch.float32, quant)


def resolve_dtype(name: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """The one dtype for a precision option where weights and products share it (mixed-
    precision training's autocast dtype): the option's dtype where `fast_on` the device, else
    float32 with a warning. "auto" is not an option here (there is no checkpoint to follow).

    Args:
        name: "fp32" | "bf16" | "fp16" (or "float32" / "bfloat16" / "float16", or a torch dtype).
        device: where the model will run.

    Returns:
        The dtype to build or cast the model with.

    Raises:
        PrecisionError: an unknown precision name (a ValueError).
    """
    if name == "auto" or name in QUANT_SCHEMES:
        raise PrecisionError(f"precision {name!r} needs a checkpoint; give fp32, bf16 or fp16")
    dtype = _weight_dtype(name, torch.float32)
    if fast_on(dtype, device):
        return dtype
    warnings.warn(f"{dtype} matrix products are slow on {device} (no {dtype} units); using "
                  "float32", stacklevel=2)
    return torch.float32


def _weight_dtype(name: str | torch.dtype | None, stored: torch.dtype) -> torch.dtype:
    """The weight dtype a precision option names ("auto"/None: `stored`, float64 as float32).

    Raises:
        PrecisionError: an unknown name.
    """
    if name is None or name == "auto":
        return stored if stored in (torch.bfloat16, torch.float16) else torch.float32
    if isinstance(name, torch.dtype) and name in _DTYPES.values():
        return name
    if isinstance(name, str) and name in _DTYPES:
        return _DTYPES[name]
    raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)} (or float32, "
                         f"bfloat16, float16), got {name!r}")
