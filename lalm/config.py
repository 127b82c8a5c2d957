"""Architecture configuration: one `ModelConfig` = encoder + projector + decoder sub-configs.

Both checkpoint families (Qwen-Audio v1 and Qwen2-Audio) are the same computation; the few
places where they differ are switches here (`EncoderConfig.frame_cutoff`,
`ProjectorConfig.audio_bos_eos`, `DecoderConfig.dynamic_ntk` / `logn_attn`, widths, eps, vocab);
decoders of other LLM families (Llama, Qwen3: `lalm.checkpoint.gguf`) switch `qkv_bias`,
`qk_norm` and `head_width`.
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

from lalm.errors import PrecisionError

FrameCutoff = Literal["lookahead", "pairs"]


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
    frame_cutoff: FrameCutoff = "lookahead"

    def __post_init__(self) -> None:
        _check_heads("encoder", self.dim, self.n_head, self.n_head)
        if self.frame_cutoff not in ("lookahead", "pairs"):
            raise ValueError(
                f"encoder.frame_cutoff must be 'lookahead' or 'pairs', got {self.frame_cutoff!r}"
            )
        _check_positive("encoder", n_mels=self.n_mels, n_ctx=self.n_ctx, n_layer=self.n_layer,
                        hidden_dim=self.hidden_dim)


@dataclass
class ProjectorConfig:
    """Stride-2 average pool, LayerNorm (`ln_post`), Linear to the decoder width."""

    audio_bos_eos: bool = False  # learned [2, out_dim] rows framing each clip (Qwen-Audio v1)
    norm_eps: float = 1e-5  # eps of ln_post


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

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.head_width or self.dim // self.n_head

    def __post_init__(self) -> None:
        # with an explicit head width, q projects dim -> n_head * head_width (need not be dim)
        _check_heads("decoder", self.n_head if self.head_width else self.dim, self.n_head,
                     self.n_kv_head)
        if self.head_width is not None and self.head_width <= 0:
            raise ValueError(f"decoder.head_width must be positive, got {self.head_width}")
        if self.head_dim % 2:
            raise ValueError(f"decoder head_dim must be even for RoPE, got {self.head_dim}")
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
        """Inverse of `to_dict`; unknown sections or fields raise ValueError naming them."""
        unknown = set(data) - {"encoder", "projector", "decoder"}
        if unknown:
            raise ValueError(f"unknown model config sections: {sorted(unknown)}")
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
        raise ValueError(f"unknown {section} config fields: {sorted(unknown)}")
    return cls(**values)


def _check_heads(section: str, dim: int, n_head: int, n_kv_head: int) -> None:
    if n_head <= 0 or n_kv_head <= 0 or dim <= 0:
        raise ValueError(f"{section}: dim, n_head and n_kv_head must be positive")
    if dim % n_head:
        raise ValueError(f"{section}.dim ({dim}) must be divisible by {section}.n_head ({n_head})")
    if n_head % n_kv_head:
        raise ValueError(
            f"{section}.n_head ({n_head}) must be divisible by {section}.n_kv_head ({n_kv_head})"
        )


def _check_positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{section}.{name} must be positive, got {value}")


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
}

DtypeName = Literal["fp32", "bf16", "fp16"]
#: What a user asks for: "auto" (the checkpoint's own dtype), or a weight dtype.
PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


@dataclass(frozen=True)
class Precision:
    """How a model is held and computed.

    Attributes:
        weights: dtype of the floating-point weights in memory (what loading keeps or casts to).
        compute: dtype of activations and matrix products: `weights` where the device has
            fast kernels for it, else float32 (the weights stay `weights` in memory and each
            product upcasts them just in time: `lalm.model.upcast`).
    """

    weights: torch.dtype
    compute: torch.dtype

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
    weights = _weight_dtype(name, stored)
    if fast_on(weights, device):
        return Precision(weights, weights)
    warnings.warn(
        f"{weights} matrix products are slow on {device} (no {weights} units): the weights "
        f"stay {weights} in memory and each product computes in float32",
        stacklevel=2,
    )
    return Precision(weights, torch.float32)


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
    if name == "auto":
        raise PrecisionError("precision 'auto' needs a checkpoint; give fp32, bf16 or fp16")
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
