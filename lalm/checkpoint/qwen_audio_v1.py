"""Qwen-Audio / Qwen-Audio-Chat (v1, QWen code layout) <-> lalm: key map and config translation.

The published v1 checkpoints (`QWenLMHeadModel`) name their tensors `transformer.wte`,
`transformer.h.{i}.*`, `transformer.ln_f`, `lm_head` and, for the audio side,
`transformer.audio.*` (Whisper names, plus `ln_post`, `proj` and the learned
`audio_bos_eos_token`). Four details differ from lalm's layout and live here, as data:

* `attn.c_attn` packs q, k, v (each `hidden_size` rows, with bias) along the output dimension.
  It is split into the virtual names `c_attn.weight[q]` ... `[v]`, which the key map renames
  like any other tensor; saving concatenates them back in the same order.
* The MLP is `c_proj(w1(x) * silu(w2(x)))`: the SiLU gate is `w2` (lalm `gate`), `w1` is
  lalm `up`, and both are `intermediate_size // 2` wide.
* `ln_post` and `proj` belong to lalm's projector (they run after the stride-2 pool), and
  `audio_bos_eos_token.weight` [2, hidden] is lalm's `projector.audio_bos_eos`.
* The embedding and `lm_head` have `vocab_size` 155,947 rows while the tokenizer has 155,165
  ids: the extra rows are padding that the tokenizer can never produce (the model can; see
  `lalm.tokenizer.OUT_OF_VOCAB_FORMAT`). They are loaded as they are.

config.json is the QWenConfig one with an `audio` block (the reference builds its audio encoder
from it). Dynamic NTK and logn attention (`use_dynamic_ntk`, `use_logn_attn`, relative to
`seq_length`) map to `DecoderConfig.dynamic_ntk` / `logn_attn` / `train_seq_len`.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from lalm.checkpoint.hf_json import Kind, check_kinds
from lalm.checkpoint.keymap import KeyMap
from lalm.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig
from lalm.errors import CheckpointError

MODEL_TYPE = "qwen"
AUDIO_START_ID = 155163  # <audio>; the reference reads the audio span from it (`audio_start_id`)

#: Parts of each fused v1 tensor, in the order they are stacked along dim 0.
FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "transformer.h.{}.attn.c_attn.weight": ("q", "k", "v"),
    "transformer.h.{}.attn.c_attn.bias": ("q", "k", "v"),
}

_AUDIO_BLOCK = (
    "attn.query.weight", "attn.query.bias", "attn.key.weight", "attn.value.weight",
    "attn.value.bias", "attn.out.weight", "attn.out.bias", "attn_ln.weight", "attn_ln.bias",
    "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp_ln.weight", "mlp_ln.bias",
)
_LLM_BLOCK = {
    "attn.c_attn.weight[q]": "attn.q.weight",
    "attn.c_attn.weight[k]": "attn.k.weight",
    "attn.c_attn.weight[v]": "attn.v.weight",
    "attn.c_attn.bias[q]": "attn.q.bias",
    "attn.c_attn.bias[k]": "attn.k.bias",
    "attn.c_attn.bias[v]": "attn.v.bias",
    "attn.c_proj.weight": "attn.o.weight",
    "ln_1.weight": "attn_norm.weight",
    "ln_2.weight": "mlp_norm.weight",
    "mlp.w2.weight": "mlp.gate.weight",  # the SiLU side
    "mlp.w1.weight": "mlp.up.weight",
    "mlp.c_proj.weight": "mlp.down.weight",
}

#: v1 name (fused tensors as their `[part]` virtual names) -> lalm name; `{}` is the layer.
V1_TO_LALM: dict[str, str] = {
    "transformer.audio.conv1.weight": "encoder.conv1.weight",
    "transformer.audio.conv1.bias": "encoder.conv1.bias",
    "transformer.audio.conv2.weight": "encoder.conv2.weight",
    "transformer.audio.conv2.bias": "encoder.conv2.bias",
    "transformer.audio.positional_embedding": "encoder.positional_embedding",
    **{f"transformer.audio.blocks.{{}}.{name}": f"encoder.blocks.{{}}.{name}"
       for name in _AUDIO_BLOCK},
    "transformer.audio.ln_post.weight": "projector.ln_post.weight",
    "transformer.audio.ln_post.bias": "projector.ln_post.bias",
    "transformer.audio.proj.weight": "projector.proj.weight",
    "transformer.audio.proj.bias": "projector.proj.bias",
    "transformer.audio.audio_bos_eos_token.weight": "projector.audio_bos_eos",
    "transformer.wte.weight": "decoder.embed.weight",
    **{f"transformer.h.{{}}.{v1}": f"decoder.layers.{{}}.{ours}"
       for v1, ours in _LLM_BLOCK.items()},
    "transformer.ln_f.weight": "decoder.norm.weight",
    "lm_head.weight": "decoder.lm_head.weight",
}
KEY_MAP = KeyMap(V1_TO_LALM, "Qwen-Audio v1")

_FUSED_RULES = [
    (re.compile("^" + re.escape(pattern).replace(r"\{\}", r"\d+") + "$"), parts)
    for pattern, parts in FUSED_PARTS.items()
]
_PART_NAME = re.compile(r"^(?P<fused>.+)\[(?P<part>[a-z]+)\]$")


def _fused_parts(key: str) -> tuple[str, ...] | None:
    """The parts a fused v1 tensor name stacks (`FUSED_PARTS`), or None for other names."""
    return next((parts for rule, parts in _FUSED_RULES if rule.match(key)), None)


def split_fused(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Replace each fused tensor by its parts, named `<name>[<part>]` (views, no copies).

    Raises:
        CheckpointError: a fused tensor whose first dimension does not split evenly.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = _fused_parts(key)
        if parts is None:
            out[key] = value
            continue
        if value.ndim == 0 or value.shape[0] % len(parts):
            raise CheckpointError(
                f"fused tensor {key} {tuple(value.shape)} does not split into {len(parts)} "
                "equal parts along dim 0"
            )
        chunks = value.chunk(len(parts))
        out.update((f"{key}[{part}]", chunk) for part, chunk in zip(parts, chunks, strict=True))
    return out


def join_fused(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of `split_fused`: concatenate `<name>[<part>]` tensors back into `<name>`.

    Raises:
        CheckpointError: a fused tensor with missing or unknown parts.
    """
    out: dict[str, Tensor] = {}
    groups: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _PART_NAME.match(key)
        if match is None:
            out[key] = value
        else:
            groups.setdefault(match["fused"], {})[match["part"]] = value
    for fused, found in groups.items():
        parts = _fused_parts(fused)
        if parts is None or set(found) != set(parts):
            raise CheckpointError(
                f"cannot rebuild fused tensor {fused}: have parts {sorted(found)}, "
                f"need {list(parts or ())}"
            )
        out[fused] = torch.cat([found[part] for part in parts])
    return out


def to_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and unfuse) a v1 state dict into lalm's names.

    Raises:
        CheckpointError: a key the map does not know, or a fused tensor that does not split.
    """
    return KEY_MAP.convert(split_fused(state))


def from_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A lalm state dict under the v1 names, q/k/v fused back into `c_attn` (exact inverse)."""
    return join_fused(KEY_MAP.convert(state, inverse=True))


# ------------------------------------------------------------------------------ config.json

# QWenConfig's constructor defaults: a config.json may leave these out. `seq_length` and the
# `audio` block have no default and must be present.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "layer_norm_epsilon": 1e-6, "max_position_embeddings": 8192,
    "scale_attn_weights": True, "kv_channels": 128, "rotary_pct": 1.0,
    "rotary_emb_base": 10000, "use_dynamic_ntk": True, "use_logn_attn": True,
    "intermediate_size": 22016, "no_bias": True, "tie_word_embeddings": False,
}
_AUDIO_KEYS = ("n_mels", "n_ctx", "n_state", "n_head", "n_layer", "output_dim", "avg_pool",
               "add_audio_bos_eos_token", "audio_start_id")
# What kind of JSON value each translated field must hold (`hf_json.check_kinds`).
_KINDS: dict[str, Kind] = {
    "vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int,
    "layer_norm_epsilon": float, "max_position_embeddings": int, "kv_channels": int,
    "rotary_pct": float, "rotary_emb_base": float, "use_dynamic_ntk": bool,
    "use_logn_attn": bool, "intermediate_size": int, "seq_length": int,
}
_AUDIO_KINDS: dict[str, Kind] = {
    "n_mels": int, "n_ctx": int, "n_state": int, "n_head": int, "n_layer": int,
    "output_dim": int, "audio_start_id": int,
}
WHISPER_NORM_EPS = 1e-5  # the audio LayerNorms use PyTorch's default; config.json omits it


def is_qwen_audio_v1(hf_config: dict[str, Any]) -> bool:
    """Whether a config.json is a QWen-layout checkpoint (`config_from_hf` then demands the
    `audio` block, so a text-only Qwen-7B is rejected with a clear message)."""
    return hf_config.get("model_type") == MODEL_TYPE


def config_from_hf(hf_config: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate a Qwen-Audio (v1) config.json into a `ModelConfig`.

    Raises:
        CheckpointError: not a v1 audio checkpoint, a missing field, or a setting lalm does not
            implement (partial rotary, tied embeddings, biases other than c_attn's, no average
            pool or BOS/EOS rows, a projector width other than hidden_size).
    """
    if not is_qwen_audio_v1(hf_config):
        raise CheckpointError(
            f"{source}: model_type {hf_config.get('model_type')!r} is not {MODEL_TYPE!r}"
        )
    audio = hf_config.get("audio")
    if not isinstance(audio, dict):
        raise CheckpointError(
            f"{source}: no 'audio' block: a text-only QWen checkpoint, not Qwen-Audio"
        )
    missing = [f"audio.{k}" for k in _AUDIO_KEYS if k not in audio]
    missing += ["seq_length"] if "seq_length" not in hf_config else []
    if missing:
        raise CheckpointError(f"{source}: missing fields {missing}")
    cfg = {**_DEFAULTS, **hf_config}
    check_kinds(cfg, _KINDS, "", source)
    check_kinds(audio, _AUDIO_KINDS, "audio.", source)
    hidden, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    unsupported = {
        "rotary_pct != 1.0": cfg["rotary_pct"] != 1.0,
        "no_bias = false": cfg["no_bias"] is not True,
        "tie_word_embeddings = true": cfg["tie_word_embeddings"] is not False,
        "scale_attn_weights = false": cfg["scale_attn_weights"] is not True,
        "kv_channels != hidden_size / num_attention_heads":
            n_head <= 0 or cfg["kv_channels"] * n_head != hidden,
        "odd intermediate_size": cfg["intermediate_size"] % 2 != 0,
        "audio.avg_pool = false": audio["avg_pool"] is not True,
        "audio.add_audio_bos_eos_token = false": audio["add_audio_bos_eos_token"] is not True,
        "audio.output_dim != hidden_size": audio["output_dim"] != hidden,
        f"audio.audio_start_id != {AUDIO_START_ID}": audio["audio_start_id"] != AUDIO_START_ID,
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise CheckpointError(f"{source}: unsupported Qwen-Audio settings {bad}")
    try:
        return ModelConfig(
            encoder=EncoderConfig(
                n_mels=audio["n_mels"], n_ctx=audio["n_ctx"], dim=audio["n_state"],
                n_head=audio["n_head"], n_layer=audio["n_layer"],
                hidden_dim=4 * audio["n_state"], norm_eps=WHISPER_NORM_EPS,
                frame_cutoff="pairs",
            ),
            projector=ProjectorConfig(audio_bos_eos=True, norm_eps=WHISPER_NORM_EPS),
            decoder=DecoderConfig(
                vocab_size=cfg["vocab_size"], dim=hidden, n_layer=cfg["num_hidden_layers"],
                n_head=n_head, n_kv_head=n_head, hidden_dim=cfg["intermediate_size"] // 2,
                norm_eps=cfg["layer_norm_epsilon"], rope_theta=float(cfg["rotary_emb_base"]),
                max_seq_len=cfg["max_position_embeddings"], qkv_bias=True,
                dynamic_ntk=bool(cfg["use_dynamic_ntk"]), logn_attn=bool(cfg["use_logn_attn"]),
                train_seq_len=cfg["seq_length"],
            ),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from err


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A v1 config.json for `config`, in the layout of the published Qwen-Audio one.

    Raises:
        CheckpointError: the config uses something v1 cannot express (grouped key/value heads,
            no q/k/v bias, no BOS/EOS rows, the Qwen2-Audio frame cut-off, other widths or eps).
    """
    enc, dec = config.encoder, config.decoder
    not_v1 = {
        "decoder.n_kv_head != n_head": dec.n_kv_head != dec.n_head,
        "decoder.qkv_bias = False": not dec.qkv_bias,
        "decoder.qk_norm": dec.qk_norm,
        "decoder.head_width": dec.head_width is not None,
        "projector.audio_bos_eos = False": not config.projector.audio_bos_eos,
        "encoder.frame_cutoff != 'pairs'": enc.frame_cutoff != "pairs",
        "Omni / Qwen3-ASR switches (n_window, stem, key_bias, projector.kind, tie, M-RoPE)":
            enc.n_window is not None or enc.stem != "conv1d" or enc.key_bias
            or config.projector.kind != "pool" or dec.tie_embeddings
            or dec.mrope_section is not None,
        "encoder.hidden_dim != 4 * dim": enc.hidden_dim != 4 * enc.dim,
        f"encoder/projector norm_eps != {WHISPER_NORM_EPS}":
            enc.norm_eps != WHISPER_NORM_EPS or config.projector.norm_eps != WHISPER_NORM_EPS,
    }
    bad = [name for name, is_set in not_v1.items() if is_set]
    if bad:
        raise CheckpointError(f"cannot express {bad} in a Qwen-Audio (v1) config")
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "model_type": MODEL_TYPE,
        "torch_dtype": torch_dtype,
        "attn_dropout_prob": 0.0,
        "emb_dropout_prob": 0.0,
        "bf16": False, "fp16": False, "fp32": False,
        "hidden_size": dec.dim,
        "intermediate_size": 2 * dec.hidden_dim,
        "kv_channels": dec.head_dim,
        "layer_norm_epsilon": dec.norm_eps,
        "num_attention_heads": dec.n_head,
        "num_hidden_layers": dec.n_layer,
        "max_position_embeddings": dec.max_seq_len,
        "no_bias": True,
        "rotary_emb_base": dec.rope_theta,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": dec.train_seq_len,
        "tie_word_embeddings": False,
        "tokenizer_type": "QWenTokenizer",
        "use_cache": True,
        "vocab_size": dec.vocab_size,
        "use_dynamic_ntk": dec.dynamic_ntk,
        "use_logn_attn": dec.logn_attn,
        "audio": {
            "n_mels": enc.n_mels, "n_ctx": enc.n_ctx, "n_state": enc.dim, "n_head": enc.n_head,
            "n_layer": enc.n_layer, "output_dim": dec.dim, "avg_pool": True,
            "add_audio_bos_eos_token": True, "audio_start_id": AUDIO_START_ID,
        },
    }
