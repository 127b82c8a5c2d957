"""Qwen2-Audio (Hugging Face layout) <-> lalm: the key map and the config translation.

On disk (what `save_pretrained` writes in transformers 4.x and 5.x, and what the published
Qwen/Qwen2-Audio-7B(-Instruct) repositories hold) the names are `audio_tower.*`,
`multi_modal_projector.linear.*`, `language_model.model.*` and `language_model.lm_head.weight`.
transformers 5 names the same tensors differently in memory (`model.audio_tower.*`,
`model.language_model.*`, `lm_head.weight`); checkpoints saved from that layout are read too.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lalm.checkpoint.hf_json import Kind, check_kinds, section
from lalm.checkpoint.keymap import KeyMap, decoder_keys, rename_prefix
from lalm.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig
from lalm.errors import CheckpointError

MODEL_TYPE = "qwen2_audio"
AUDIO_TOKEN_ID = 151646  # <|AUDIO|>, `audio_token_index` of every released checkpoint

#: Whisper-style encoder layer (also Qwen2.5-Omni's and Qwen3-ASR's) -> lalm encoder block.
ENCODER_LAYER = {
    "self_attn.q_proj.weight": "attn.query.weight",
    "self_attn.q_proj.bias": "attn.query.bias",
    "self_attn.k_proj.weight": "attn.key.weight",
    "self_attn.v_proj.weight": "attn.value.weight",
    "self_attn.v_proj.bias": "attn.value.bias",
    "self_attn.out_proj.weight": "attn.out.weight",
    "self_attn.out_proj.bias": "attn.out.bias",
    "self_attn_layer_norm.weight": "attn_ln.weight",
    "self_attn_layer_norm.bias": "attn_ln.bias",
    "fc1.weight": "mlp.0.weight",
    "fc1.bias": "mlp.0.bias",
    "fc2.weight": "mlp.2.weight",
    "fc2.bias": "mlp.2.bias",
    "final_layer_norm.weight": "mlp_ln.weight",
    "final_layer_norm.bias": "mlp_ln.bias",
}
#: Qwen2 / Qwen3 / Llama decoder layer (transformers names) -> lalm decoder layer.
DECODER_LAYER = {
    "self_attn.q_proj.weight": "attn.q.weight",
    "self_attn.q_proj.bias": "attn.q.bias",
    "self_attn.k_proj.weight": "attn.k.weight",
    "self_attn.k_proj.bias": "attn.k.bias",
    "self_attn.v_proj.weight": "attn.v.weight",
    "self_attn.v_proj.bias": "attn.v.bias",
    "self_attn.o_proj.weight": "attn.o.weight",
    "mlp.gate_proj.weight": "mlp.gate.weight",
    "mlp.up_proj.weight": "mlp.up.weight",
    "mlp.down_proj.weight": "mlp.down.weight",
    "self_attn.q_norm.weight": "attn.q_norm.weight",
    "self_attn.k_norm.weight": "attn.k_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}

#: Hugging Face on-disk name -> lalm name; `{}` is the layer index.
HF_TO_LALM: dict[str, str] = {
    "audio_tower.conv1.weight": "encoder.conv1.weight",
    "audio_tower.conv1.bias": "encoder.conv1.bias",
    "audio_tower.conv2.weight": "encoder.conv2.weight",
    "audio_tower.conv2.bias": "encoder.conv2.bias",
    "audio_tower.embed_positions.weight": "encoder.positional_embedding",
    **{f"audio_tower.layers.{{}}.{hf}": f"encoder.blocks.{{}}.{ours}"
       for hf, ours in ENCODER_LAYER.items()},
    "audio_tower.layer_norm.weight": "projector.ln_post.weight",
    "audio_tower.layer_norm.bias": "projector.ln_post.bias",
    "multi_modal_projector.linear.weight": "projector.proj.weight",
    "multi_modal_projector.linear.bias": "projector.proj.bias",
    **decoder_keys("language_model.model.", "language_model.lm_head.weight", DECODER_LAYER),
}
KEY_MAP = KeyMap(HF_TO_LALM, "Qwen2-Audio")

#: transformers 5 in-memory prefixes -> on-disk prefixes (first match wins).
_V5_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.", ""),
    ("lm_head.", "language_model.lm_head."),
)


def to_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Qwen2-Audio state dict (on-disk or transformers-5 in-memory names) to lalm's.

    Raises:
        CheckpointError: a key the map does not know.
    """
    return KEY_MAP.convert({rename_prefix(key, _V5_PREFIXES): value
                            for key, value in state.items()})


def from_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a lalm state dict to the Qwen2-Audio on-disk names."""
    return KEY_MAP.convert(state, inverse=True)


def memory_name(key: str) -> str:
    """The transformers-5 in-memory name of an on-disk key (``language_model.model.x`` ->
    ``model.language_model.x``): the module paths PEFT adapters name."""
    for memory, disk in _V5_PREFIXES:
        if disk and key.startswith(disk):
            return memory + key[len(disk):]
    return "model." + key


# Field defaults of transformers' Qwen2Config / Qwen2AudioEncoderConfig: the published
# config.json leaves out every field equal to them (e.g. hidden_size 4096).
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "use_sliding_window": False,
}
_AUDIO_DEFAULTS: dict[str, Any] = {
    "num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120, "d_model": 1280, "max_source_positions": 1500,
    "activation_function": "gelu", "scale_embedding": False,
}


# What kind of JSON value each translated field must hold (`hf_json.check_kinds`).
_TEXT_KINDS: dict[str, Kind] = {
    "vocab_size": int, "hidden_size": int, "intermediate_size": int, "num_hidden_layers": int,
    "num_attention_heads": int, "num_key_value_heads": int, "hidden_act": str,
    "max_position_embeddings": int, "rms_norm_eps": float, "rope_theta": float,
}
_AUDIO_KINDS: dict[str, Kind] = {
    "num_mel_bins": int, "encoder_layers": int, "encoder_attention_heads": int,
    "encoder_ffn_dim": int, "d_model": int, "max_source_positions": int,
    "activation_function": str,
}


def is_qwen2_audio(hf_config: dict[str, Any]) -> bool:
    """Whether a config.json describes a Qwen2-Audio checkpoint."""
    return hf_config.get("model_type") == MODEL_TYPE


def config_from_hf(hf_config: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate a Qwen2-Audio config.json (transformers 4.x or 5.x) into a `ModelConfig`.

    Raises:
        CheckpointError: not Qwen2-Audio, or a feature lalm does not implement (tied embeddings,
            sliding-window attention, RoPE scaling, another activation).
    """
    if not is_qwen2_audio(hf_config):
        raise CheckpointError(
            f"{source}: model_type {hf_config.get('model_type')!r} is not {MODEL_TYPE!r}"
        )
    text = {**_TEXT_DEFAULTS, **section(hf_config, "text_config", source)}
    audio = {**_AUDIO_DEFAULTS, **section(hf_config, "audio_config", source)}
    check_kinds(text, _TEXT_KINDS, "text_config.", source)
    check_kinds(audio, _AUDIO_KINDS, "audio_config.", source)
    rope = section(text, "rope_parameters", source, "text_config.") or section(
        text, "rope_scaling", source, "text_config.")
    check_kinds(rope, {"rope_type": str, "type": str, "rope_theta": float},
                "text_config rope parameters: ", source)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    n_head = text["num_attention_heads"]
    unsupported = {
        "text_config.tie_word_embeddings": text["tie_word_embeddings"] is not False,
        "text_config.use_sliding_window": text["use_sliding_window"] is not False,
        "text_config.hidden_act": text["hidden_act"] != "silu",
        "text_config rope type": rope_type != "default",
        "audio_config.activation_function": audio["activation_function"] != "gelu",
        "audio_config.scale_embedding": audio["scale_embedding"] is not False,
    }
    text_type = text.get("model_type", "qwen2")
    if text_type in ("llama", "qwen3"):  # their bias switch covers o_proj too; lalm's o has none
        unsupported["text_config.attention_bias"] = text.get("attention_bias") is not False
        unsupported["text_config.mlp_bias"] = text.get("mlp_bias", False) is not False
    else:
        unsupported[f"text_config.model_type {text_type!r}"] = text_type != "qwen2"
    head_dim = text.get("head_dim") or text["hidden_size"] // n_head
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise CheckpointError(f"{source}: unsupported Qwen2-Audio settings {bad}")
    try:
        return ModelConfig(
            encoder=EncoderConfig(
                n_mels=audio["num_mel_bins"], n_ctx=audio["max_source_positions"],
                dim=audio["d_model"], n_head=audio["encoder_attention_heads"],
                n_layer=audio["encoder_layers"], hidden_dim=audio["encoder_ffn_dim"],
                frame_cutoff="lookahead",
            ),
            projector=ProjectorConfig(audio_bos_eos=False),
            decoder=DecoderConfig(
                vocab_size=text["vocab_size"], dim=text["hidden_size"],
                n_layer=text["num_hidden_layers"], n_head=n_head,
                n_kv_head=text["num_key_value_heads"] or n_head,
                hidden_dim=text["intermediate_size"], norm_eps=text["rms_norm_eps"],
                rope_theta=float(rope.get("rope_theta", text["rope_theta"])),
                max_seq_len=text["max_position_embeddings"], qkv_bias=text_type == "qwen2",
                qk_norm=text_type == "qwen3",
                head_width=None if head_dim * n_head == text["hidden_size"] else head_dim,
            ),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from err


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A Qwen2-Audio config.json for `config` that transformers 4.x and 5.x both read.

    Raises:
        CheckpointError: the config uses a switch Qwen2-Audio does not have (v1 features).
    """
    enc, dec = config.encoder, config.decoder
    foreign = {
        "projector.audio_bos_eos": config.projector.audio_bos_eos,
        "decoder.dynamic_ntk": dec.dynamic_ntk,
        "decoder.logn_attn": dec.logn_attn,
        "encoder.frame_cutoff='pairs'": enc.frame_cutoff != "lookahead",
        "encoder.n_window (windowed encoder)": enc.n_window is not None,
        "encoder.stem 'conv2d' / key_bias": enc.stem != "conv1d" or enc.key_bias,
        "projector.kind 'mlp'": config.projector.kind != "pool",
        "decoder.tie_embeddings": dec.tie_embeddings,
        "decoder.mrope_section": dec.mrope_section is not None,
    }
    bad = [name for name, is_set in foreign.items() if is_set]
    if dec.qkv_bias and (dec.qk_norm or dec.head_width):
        bad.append("decoder.qkv_bias with qk_norm or head_width (no such text model)")
    if bad:
        raise CheckpointError(f"cannot express {bad} in a Qwen2-Audio config")
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "model_type": MODEL_TYPE,
        "audio_token_index": AUDIO_TOKEN_ID,
        "ignore_index": -100,
        "torch_dtype": torch_dtype,
        "audio_config": {
            "model_type": "qwen2_audio_encoder", "num_mel_bins": enc.n_mels,
            "encoder_layers": enc.n_layer, "encoder_attention_heads": enc.n_head,
            "encoder_ffn_dim": enc.hidden_dim, "d_model": enc.dim,
            "max_source_positions": enc.n_ctx, "activation_function": "gelu",
            "scale_embedding": False,
        },
        "text_config": {
            # a decoder without q/k/v bias is a Llama text model (Qwen2 always has the bias)
            **_text_type(dec),
            "vocab_size": dec.vocab_size, "hidden_size": dec.dim,
            "intermediate_size": dec.hidden_dim, "num_hidden_layers": dec.n_layer,
            "num_attention_heads": dec.n_head, "num_key_value_heads": dec.n_kv_head,
            "hidden_act": "silu", "max_position_embeddings": dec.max_seq_len,
            "rms_norm_eps": dec.norm_eps, "rope_theta": dec.rope_theta,
            "tie_word_embeddings": False, "use_sliding_window": False,
        },
    }


def _text_type(dec: DecoderConfig) -> dict[str, Any]:
    """The text model a decoder config is: Qwen2 (q/k/v bias), Qwen3 (q/k RMSNorm), else
    Llama (neither)."""
    if dec.qkv_bias:
        return {"model_type": "qwen2"}
    return {"model_type": "qwen3" if dec.qk_norm else "llama", "attention_bias": False,
            "head_dim": dec.head_dim, **({} if dec.qk_norm else {"mlp_bias": False})}
