"""Qwen3-ASR (Hugging Face layouts) <-> lalm: the key map and the config translation (the parser
of its transcripts is the family's, `lalm.prompt.qwen3_asr.parse_asr_output`).

Two layouts are published. transformers 5's (Qwen/Qwen3-ASR-*-hf; what
`Qwen3ASRForConditionalGeneration.save_pretrained` writes, and what lalm saves): config.json
with `model_type` "qwen3_asr", `audio_config` (model_type "qwen3_asr_encoder") and
`text_config` (Qwen3), weights `model.audio_tower.*`, `model.multi_modal_projector.linear_{1,2}.*`,
`model.language_model.*` and, unless tied, `lm_head.weight`. The original release
(Qwen/Qwen3-ASR-0.6B / -1.7B, the `qwen_asr` package): the same fields under `thinker_config`,
weights `thinker.audio_tower.*` (the projector as `proj1` / `proj2`), `thinker.model.*`,
`thinker.lm_head.weight`. Both load.

The encoder: a Conv2d stem over 100-frame chunks (`n_window` 50), windowed attention over
`n_window_infer` frames, `ln_post`; the projector an MLP with one audio row per encoder
position; the decoder Qwen3 (q/k RMSNorm, no bias, head_dim 128, tied embeddings).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lalm.checkpoint.hf_json import Kind, check_kinds, section
from lalm.checkpoint.keymap import KeyMap, decoder_keys, rename_prefix
from lalm.checkpoint.qwen2_5_omni import rope_settings, tie_lm_head
from lalm.checkpoint.qwen2_audio import DECODER_LAYER, ENCODER_LAYER
from lalm.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig
from lalm.errors import CheckpointError
from lalm.prompt.qwen3_asr import AsrOutput, parse_asr_output  # noqa: F401 (re-exported)

MODEL_TYPE = "qwen3_asr"
AUDIO_TOKEN_ID = 151676  # <|audio_pad|>
AUDIO_START_TOKEN_ID = 151669  # <|audio_start|>
AUDIO_END_TOKEN_ID = 151670  # <|audio_end|>
ASR_TEXT_TOKEN_ID = 151704  # <asr_text> (an ordinary added token, not special)
TIMESTAMP_TOKEN_ID = 151705  # <timestamp> (forced aligner)
EOS_TOKEN_IDS = (151643, 151645)  # <|endoftext|>, <|im_end|>
PAD_TOKEN_ID = 151645

#: transformers-5 name -> lalm name; `{}` is the layer index.
HF_TO_LALM: dict[str, str] = {
    **{f"model.audio_tower.conv2d{i}.{p}": f"encoder.conv2d{i}.{p}"
       for i in (1, 2, 3) for p in ("weight", "bias")},
    "model.audio_tower.conv_out.weight": "encoder.conv_out.weight",
    **{f"model.audio_tower.layers.{{}}.{hf}": f"encoder.blocks.{{}}.{ours}"
       for hf, ours in {**ENCODER_LAYER, "self_attn.k_proj.bias": "attn.key.bias"}.items()},
    "model.audio_tower.ln_post.weight": "projector.ln_post.weight",
    "model.audio_tower.ln_post.bias": "projector.ln_post.bias",
    "model.multi_modal_projector.linear_1.weight": "projector.hidden.weight",
    "model.multi_modal_projector.linear_1.bias": "projector.hidden.bias",
    "model.multi_modal_projector.linear_2.weight": "projector.proj.weight",
    "model.multi_modal_projector.linear_2.bias": "projector.proj.bias",
    **decoder_keys("model.language_model.", "lm_head.weight", DECODER_LAYER),
}
KEY_MAP = KeyMap(HF_TO_LALM, "Qwen3-ASR")

#: original-release prefixes -> transformers-5 prefixes (first match wins)
_ORIGINAL_PREFIXES = (
    ("thinker.audio_tower.proj1.", "model.multi_modal_projector.linear_1."),
    ("thinker.audio_tower.proj2.", "model.multi_modal_projector.linear_2."),
    ("thinker.audio_tower.", "model.audio_tower."),
    ("thinker.model.", "model.language_model."),
    ("thinker.lm_head.", "lm_head."),
)


def to_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a Qwen3-ASR state dict (either layout) to lalm's; a tied checkpoint without
    `lm_head.weight` gets the embedding for it.

    Raises:
        CheckpointError: a key the map does not know.
    """
    return tie_lm_head(KEY_MAP.convert({rename_prefix(k, _ORIGINAL_PREFIXES): v
                                        for k, v in state.items()}))


def from_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a lalm state dict to the transformers-5 names."""
    return KEY_MAP.convert(state, inverse=True)


# Field defaults of transformers' Qwen3ASREncoderConfig and of the Qwen3 text config that
# Qwen3ASRConfig builds (a config.json may leave out any field equal to them).
_AUDIO_DEFAULTS: dict[str, Any] = {
    "num_mel_bins": 128, "encoder_layers": 24, "encoder_attention_heads": 16,
    "encoder_ffn_dim": 4096, "d_model": 1024, "n_window": 50, "n_window_infer": 800,
    "downsample_hidden_size": 480, "output_dim": 3584, "activation_function": "gelu",
    "scale_embedding": False,
}
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144,
    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 65536,
    "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False,
    "use_sliding_window": False,
}
_AUDIO_KINDS: dict[str, Kind] = {
    "num_mel_bins": int, "encoder_layers": int, "encoder_attention_heads": int,
    "encoder_ffn_dim": int, "d_model": int, "n_window": int, "n_window_infer": int,
    "downsample_hidden_size": int, "output_dim": int, "activation_function": str,
    "scale_embedding": bool, "max_position_embeddings": int, "max_source_positions": int,
}
_TEXT_KINDS: dict[str, Kind] = {
    "vocab_size": int, "hidden_size": int, "intermediate_size": int, "num_hidden_layers": int,
    "num_attention_heads": int, "num_key_value_heads": int, "head_dim": int, "hidden_act": str,
    "max_position_embeddings": int, "rms_norm_eps": float, "rope_theta": float,
    "attention_bias": bool, "use_sliding_window": bool, "tie_word_embeddings": bool,
}


def is_qwen3_asr(hf_config: dict[str, Any]) -> bool:
    """Whether a config.json describes a Qwen3-ASR checkpoint (either layout)."""
    return hf_config.get("model_type") == MODEL_TYPE


def config_from_hf(hf_config: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate a Qwen3-ASR config.json (either layout) into a `ModelConfig`.

    Raises:
        CheckpointError: not Qwen3-ASR, a malformed field, or a feature lalm does not
            implement (attention bias, sliding windows, another activation or RoPE type).
    """
    if not is_qwen3_asr(hf_config):
        raise CheckpointError(
            f"{source}: model_type {hf_config.get('model_type')!r} is not {MODEL_TYPE!r}")
    top = section(hf_config, "thinker_config", source) if "thinker_config" in hf_config \
        else hf_config
    audio = {**_AUDIO_DEFAULTS, **section(top, "audio_config", source)}
    text = {**_TEXT_DEFAULTS, **section(top, "text_config", source)}
    check_kinds(audio, _AUDIO_KINDS, "audio_config.", source)
    check_kinds(text, _TEXT_KINDS, "text_config.", source)
    check_kinds(hf_config, {"tie_word_embeddings": bool}, "", source)
    rope_type, theta, _ = rope_settings(text, source)  # audio positions are equal: 1-D RoPE
    chunk = 2 * audio["n_window"]
    unsupported = {
        "text_config.attention_bias": text["attention_bias"],
        "text_config.use_sliding_window": text["use_sliding_window"],
        "text_config.hidden_act": text["hidden_act"] != "silu",
        f"text_config rope type {rope_type!r}": rope_type not in ("default", "mrope"),
        "audio_config.activation_function": audio["activation_function"] != "gelu",
        "audio_config.scale_embedding": audio["scale_embedding"],
        "audio_config.n_window_infer < 2 * n_window": audio["n_window_infer"] < chunk,
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise CheckpointError(f"{source}: unsupported Qwen3-ASR settings {bad}")
    tied = hf_config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
    n_head = text["num_attention_heads"]
    try:
        return ModelConfig(
            encoder=EncoderConfig(
                n_mels=audio["num_mel_bins"],
                n_ctx=audio.get("max_position_embeddings", audio.get("max_source_positions", 13)),
                dim=audio["d_model"], n_head=audio["encoder_attention_heads"],
                n_layer=audio["encoder_layers"], hidden_dim=audio["encoder_ffn_dim"],
                n_window=audio["n_window"], window_chunks=audio["n_window_infer"] // chunk,
                stem="conv2d", stem_channels=audio["downsample_hidden_size"], key_bias=True,
            ),
            projector=ProjectorConfig(kind="mlp"),
            decoder=DecoderConfig(
                vocab_size=text["vocab_size"], dim=text["hidden_size"],
                n_layer=text["num_hidden_layers"], n_head=n_head,
                n_kv_head=text["num_key_value_heads"] or n_head,
                hidden_dim=text["intermediate_size"], norm_eps=text["rms_norm_eps"],
                rope_theta=theta, max_seq_len=text["max_position_embeddings"],
                qkv_bias=False, qk_norm=True, head_width=text["head_dim"],
                tie_embeddings=bool(tied),
            ),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from err


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A transformers-5 Qwen3-ASR config.json for `config`.

    Raises:
        CheckpointError: the config uses a switch Qwen3-ASR does not have.
    """
    enc, dec = config.encoder, config.decoder
    foreign = {
        "projector.kind != 'mlp'": config.projector.kind != "mlp",
        "projector.audio_bos_eos": config.projector.audio_bos_eos,
        "encoder.stem != 'conv2d'": enc.stem != "conv2d",
        "encoder.key_bias off": not enc.key_bias,
        "decoder.qkv_bias": dec.qkv_bias,
        "decoder.qk_norm off": not dec.qk_norm,
        "decoder.dynamic_ntk / logn_attn": dec.dynamic_ntk or dec.logn_attn,
        "decoder.mrope_section": dec.mrope_section is not None,
    }
    bad = [name for name, is_set in foreign.items() if is_set]
    if bad:
        raise CheckpointError(f"cannot express {bad} in a Qwen3-ASR config")
    n_window = enc.n_window or 0
    return {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": MODEL_TYPE, "audio_token_id": AUDIO_TOKEN_ID,
        "timestamp_token_id": TIMESTAMP_TOKEN_ID, "eos_token_id": list(EOS_TOKEN_IDS),
        "pad_token_id": PAD_TOKEN_ID, "tie_word_embeddings": dec.tie_embeddings,
        "torch_dtype": torch_dtype,
        "audio_config": {
            "model_type": "qwen3_asr_encoder", "num_mel_bins": enc.n_mels,
            "encoder_layers": enc.n_layer, "encoder_attention_heads": enc.n_head,
            "encoder_ffn_dim": enc.hidden_dim, "d_model": enc.dim, "n_window": n_window,
            "n_window_infer": 2 * n_window * enc.window_chunks,
            "downsample_hidden_size": enc.stem_channels, "output_dim": dec.dim,
            "max_position_embeddings": enc.n_ctx, "activation_function": "gelu",
            "scale_embedding": False,
        },
        "text_config": {
            "model_type": "qwen3", "vocab_size": dec.vocab_size, "hidden_size": dec.dim,
            "intermediate_size": dec.hidden_dim, "num_hidden_layers": dec.n_layer,
            "num_attention_heads": dec.n_head, "num_key_value_heads": dec.n_kv_head,
            "head_dim": dec.head_dim, "hidden_act": "silu",
            "max_position_embeddings": dec.max_seq_len, "rms_norm_eps": dec.norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": dec.rope_theta},
            "attention_bias": False, "use_sliding_window": False,
            "tie_word_embeddings": dec.tie_embeddings,
        },
    }
