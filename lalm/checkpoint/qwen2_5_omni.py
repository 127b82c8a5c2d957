"""Qwen2.5-Omni's thinker (Hugging Face layout) <-> lalm: the key map and the config translation.

The published Qwen/Qwen2.5-Omni-7B / -3B repositories hold the whole model: config.json with
`model_type` "qwen2_5_omni" and a `thinker_config` (audio_config, vision_config, text_config,
token ids) beside the talker's and token2wav's, and weights named `thinker.audio_tower.*`,
`thinker.visual.*`, `thinker.model.*`, `thinker.lm_head.weight`, `talker.*`, `token2wav.*`.
lalm is the thinker's audio-and-text path: it loads `audio_tower`, `model` and `lm_head`, and
leaves the talker, token2wav, the vision tower and the encoder's unused `audio_bos_eos_token`
rows out with a logged note. A thinker-only directory (`model_type` "qwen2_5_omni_thinker",
names without `thinker.`, as `Qwen2_5OmniThinkerForConditionalGeneration.save_pretrained`
writes them) and transformers 5's in-memory names (`model.audio_tower.*`,
`model.language_model.*`) are read too. lalm saves the thinker-only layout.

The encoder is Whisper's with windowed attention (`n_window`, lalm's `EncoderConfig.n_window`);
the decoder is Qwen2 with M-RoPE sections, whose text and audio positions are equal in all
three rows (`get_rope_index`), so they rotate as 1-D RoPE.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from torch import Tensor

from lalm.checkpoint.hf_json import Kind, check_kinds, section
from lalm.checkpoint.keymap import KeyMap, decoder_keys, rename_prefix
from lalm.checkpoint.qwen2_audio import DECODER_LAYER, ENCODER_LAYER
from lalm.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig
from lalm.errors import CheckpointError

logger = logging.getLogger(__name__)

MODEL_TYPE = "qwen2_5_omni"  # the whole model (thinker, talker, token2wav)
THINKER_TYPE = "qwen2_5_omni_thinker"
AUDIO_TOKEN_ID = 151646  # <|AUDIO|>, the thinker's `audio_token_index`
AUDIO_START_TOKEN_ID = 151647  # <|audio_bos|>
AUDIO_END_TOKEN_ID = 151648  # <|audio_eos|>
IMAGE_TOKEN_ID = 151655  # <|IMAGE|>
VIDEO_TOKEN_ID = 151656  # <|VIDEO|>
VISION_START_TOKEN_ID = 151652  # <|vision_bos|> (transformers' get_rope_index reads it)
VISION_END_TOKEN_ID = 151653  # <|vision_eos|>

#: thinker on-disk name -> lalm name; `{}` is the layer index.
HF_TO_LALM: dict[str, str] = {
    "audio_tower.conv1.weight": "encoder.conv1.weight",
    "audio_tower.conv1.bias": "encoder.conv1.bias",
    "audio_tower.conv2.weight": "encoder.conv2.weight",
    "audio_tower.conv2.bias": "encoder.conv2.bias",
    **{f"audio_tower.layers.{{}}.{hf}": f"encoder.blocks.{{}}.{ours}"
       for hf, ours in ENCODER_LAYER.items()},
    "audio_tower.ln_post.weight": "projector.ln_post.weight",
    "audio_tower.ln_post.bias": "projector.ln_post.bias",
    "audio_tower.proj.weight": "projector.proj.weight",
    "audio_tower.proj.bias": "projector.proj.bias",
    **decoder_keys("model.", "lm_head.weight", DECODER_LAYER),
}
KEY_MAP = KeyMap(HF_TO_LALM, "Qwen2.5-Omni thinker")

#: other names of the same tensors -> thinker on-disk names (first match wins)
_PREFIXES = (
    ("thinker.", ""),  # the whole-model checkpoint
    ("model.audio_tower.", "audio_tower."),  # transformers 5 in memory
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
)
#: parts of the checkpoint lalm does not run (after the renaming above), with why
IGNORED_PARTS = {
    "talker.": "talker (speech-token LM)",
    "token2wav.": "token2wav (speech synthesis)",
    "visual.": "vision tower",
    "audio_tower.audio_bos_eos_token.": "encoder audio_bos_eos_token rows (unused by the thinker)",
}


def to_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an Omni (whole or thinker-only) state dict to lalm's, leaving out the parts in
    `IGNORED_PARTS` with one logged note. A tied checkpoint without `lm_head.weight` gets the
    embedding for it.

    Raises:
        CheckpointError: a key the map does not know.
    """
    kept: dict[str, Tensor] = {}
    ignored: Counter[str] = Counter()
    for key, value in state.items():
        name = key if key.startswith(("talker.", "token2wav.")) else rename_prefix(key, _PREFIXES)
        part = next((p for p in IGNORED_PARTS if name.startswith(p)), None)
        if part is None:
            kept[name] = value
        else:
            ignored[IGNORED_PARTS[part]] += 1
    if ignored:
        logger.info("Qwen2.5-Omni: loading the thinker's audio and text parts; left out %s",
                    ", ".join(f"{what} ({n} tensors)" for what, n in ignored.items()))
    return tie_lm_head(KEY_MAP.convert(kept))


def tie_lm_head(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict whose missing `decoder.lm_head.weight` is the embedding (tied checkpoints
    store it once); the model's tie switch says whether it is shared."""
    if "decoder.lm_head.weight" not in state and "decoder.embed.weight" in state:
        state["decoder.lm_head.weight"] = state["decoder.embed.weight"]
    return state


def from_lalm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a lalm state dict to the thinker's on-disk names."""
    return KEY_MAP.convert(state, inverse=True)


# Field defaults of transformers' Qwen2_5OmniAudioEncoderConfig / Qwen2_5OmniTextConfig (a
# config.json may leave out any field equal to them).
_AUDIO_DEFAULTS: dict[str, Any] = {
    "num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120, "d_model": 1280, "max_source_positions": 1500, "n_window": 100,
    "output_dim": 3584, "activation_function": "gelu", "scale_embedding": False,
}
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "use_sliding_window": False,
}
_AUDIO_KINDS: dict[str, Kind] = {
    "num_mel_bins": int, "encoder_layers": int, "encoder_attention_heads": int,
    "encoder_ffn_dim": int, "d_model": int, "max_source_positions": int, "n_window": int,
    "output_dim": int, "activation_function": str, "scale_embedding": bool,
}
_TEXT_KINDS: dict[str, Kind] = {
    "vocab_size": int, "hidden_size": int, "intermediate_size": int, "num_hidden_layers": int,
    "num_attention_heads": int, "num_key_value_heads": int, "hidden_act": str,
    "max_position_embeddings": int, "rms_norm_eps": float, "rope_theta": float,
    "use_sliding_window": bool,
}


def is_qwen2_5_omni(hf_config: dict[str, Any]) -> bool:
    """Whether a config.json describes a Qwen2.5-Omni model or its thinker."""
    return hf_config.get("model_type") in (MODEL_TYPE, THINKER_TYPE)


def thinker_config(hf_config: dict[str, Any], source: str) -> dict[str, Any]:
    """The thinker's section of a config.json (the whole file for a thinker-only one)."""
    if hf_config.get("model_type") == MODEL_TYPE:
        return section(hf_config, "thinker_config", source)
    return hf_config


def rope_settings(text: dict[str, Any], source: str) -> tuple[str, float, list[int] | None]:
    """(rope type, theta, mrope sections) of a text config: transformers 5 `rope_parameters`
    or 4.x `rope_scaling` ({"type": "mrope", "mrope_section": [...]}) plus `rope_theta`."""
    rope = section(text, "rope_parameters", source, "text_config.") or section(
        text, "rope_scaling", source, "text_config.")
    check_kinds(rope, {"rope_type": str, "type": str, "rope_theta": float},
                "text_config rope parameters: ", source)
    sections = rope.get("mrope_section")
    if sections is not None and (not isinstance(sections, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in sections)):
        raise CheckpointError(f"{source}: text_config mrope_section must be a list of "
                              f"integers, got {sections!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    return rope_type, float(rope.get("rope_theta", text["rope_theta"])), sections


def config_from_hf(hf_config: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Translate a Qwen2.5-Omni (or thinker) config.json into a `ModelConfig`.

    Raises:
        CheckpointError: not Omni, a malformed field, or a feature lalm does not implement
            (sliding-window attention, another RoPE type or activation, scaled embeddings).
    """
    if not is_qwen2_5_omni(hf_config):
        raise CheckpointError(f"{source}: model_type {hf_config.get('model_type')!r} is not "
                              f"{MODEL_TYPE!r} or {THINKER_TYPE!r}")
    thinker = thinker_config(hf_config, source)
    audio = {**_AUDIO_DEFAULTS, **section(thinker, "audio_config", source)}
    text = {**_TEXT_DEFAULTS, **section(thinker, "text_config", source)}
    check_kinds(audio, _AUDIO_KINDS, "audio_config.", source)
    check_kinds(text, _TEXT_KINDS, "text_config.", source)
    check_kinds(thinker, {"tie_word_embeddings": bool}, "", source)
    rope_type, theta, sections = rope_settings(text, source)
    unsupported = {
        "text_config.use_sliding_window": text["use_sliding_window"],
        "text_config.hidden_act": text["hidden_act"] != "silu",
        f"text_config rope type {rope_type!r}": rope_type not in ("default", "mrope"),
        "audio_config.activation_function": audio["activation_function"] != "gelu",
        "audio_config.scale_embedding": audio["scale_embedding"],
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise CheckpointError(f"{source}: unsupported Qwen2.5-Omni settings {bad}")
    n_head = text["num_attention_heads"]
    try:
        return ModelConfig(
            encoder=EncoderConfig(
                n_mels=audio["num_mel_bins"], n_ctx=audio["max_source_positions"],
                dim=audio["d_model"], n_head=audio["encoder_attention_heads"],
                n_layer=audio["encoder_layers"], hidden_dim=audio["encoder_ffn_dim"],
                n_window=audio["n_window"],
            ),
            projector=ProjectorConfig(),
            decoder=DecoderConfig(
                vocab_size=text["vocab_size"], dim=text["hidden_size"],
                n_layer=text["num_hidden_layers"], n_head=n_head,
                n_kv_head=text["num_key_value_heads"] or n_head,
                hidden_dim=text["intermediate_size"], norm_eps=text["rms_norm_eps"],
                rope_theta=theta, max_seq_len=text["max_position_embeddings"],
                qkv_bias=True, tie_embeddings=bool(thinker.get("tie_word_embeddings", False)),
                mrope_section=sections,
            ),
        )
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from err


def config_to_hf(config: ModelConfig, torch_dtype: str = "float32") -> dict[str, Any]:
    """A thinker-only config.json for `config` that transformers 5 reads
    (`Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained`). lalm has no vision tower:
    the file declares an empty one (depth 0), so transformers builds no random vision blocks.

    Raises:
        CheckpointError: the config uses a switch the Omni thinker does not have.
    """
    enc, dec = config.encoder, config.decoder
    foreign = {
        "projector.audio_bos_eos": config.projector.audio_bos_eos,
        "projector.kind != 'pool'": config.projector.kind != "pool",
        "encoder.n_window unset": enc.n_window is None,
        "encoder.stem != 'conv1d'": enc.stem != "conv1d",
        "encoder.window_chunks != 1": enc.window_chunks != 1,
        "encoder.key_bias": enc.key_bias,
        "decoder.qkv_bias off": not dec.qkv_bias,
        "decoder.qk_norm": dec.qk_norm,
        "decoder.head_width": dec.head_width is not None,
        "decoder.dynamic_ntk / logn_attn": dec.dynamic_ntk or dec.logn_attn,
    }
    bad = [name for name, is_set in foreign.items() if is_set]
    if bad:
        raise CheckpointError(f"cannot express {bad} in a Qwen2.5-Omni thinker config")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": dec.rope_theta}
    if dec.mrope_section is not None:
        rope["mrope_section"] = list(dec.mrope_section)
    return {
        "architectures": ["Qwen2_5OmniThinkerForConditionalGeneration"],
        "model_type": THINKER_TYPE,
        "audio_token_index": AUDIO_TOKEN_ID, "audio_start_token_id": AUDIO_START_TOKEN_ID,
        "audio_end_token_id": AUDIO_END_TOKEN_ID, "image_token_index": IMAGE_TOKEN_ID,
        "video_token_index": VIDEO_TOKEN_ID, "vision_start_token_id": VISION_START_TOKEN_ID,
        "vision_end_token_id": VISION_END_TOKEN_ID, "tie_word_embeddings": dec.tie_embeddings,
        "torch_dtype": torch_dtype,
        "audio_config": {
            "model_type": "qwen2_5_omni_audio_encoder", "num_mel_bins": enc.n_mels,
            "encoder_layers": enc.n_layer, "encoder_attention_heads": enc.n_head,
            "encoder_ffn_dim": enc.hidden_dim, "d_model": enc.dim,
            "max_source_positions": enc.n_ctx, "n_window": enc.n_window,
            "output_dim": dec.dim, "activation_function": "gelu", "scale_embedding": False,
        },
        "vision_config": {"model_type": "qwen2_5_omni_vision_encoder", "depth": 0,
                          "embed_dim": 8, "hidden_size": 8, "intermediate_size": 8,
                          "num_heads": 1, "out_hidden_size": dec.dim,
                          "fullatt_block_indexes": []},
        "text_config": {
            "model_type": "qwen2_5_omni_text", "vocab_size": dec.vocab_size,
            "hidden_size": dec.dim, "intermediate_size": dec.hidden_dim,
            "num_hidden_layers": dec.n_layer, "num_attention_heads": dec.n_head,
            "num_key_value_heads": dec.n_kv_head, "hidden_act": "silu",
            "max_position_embeddings": dec.max_seq_len, "rms_norm_eps": dec.norm_eps,
            "rope_parameters": rope, "use_sliding_window": False,
            "tie_word_embeddings": dec.tie_embeddings,
        },
    }
