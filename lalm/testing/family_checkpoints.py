"""Tiny Qwen2.5-Omni (thinker) and Qwen3-ASR checkpoint directories in the hub layout.

`save_omni_checkpoint` / `save_asr_checkpoint` build transformers' own model
(`Qwen2_5OmniThinkerForConditionalGeneration`, `Qwen3ASRForConditionalGeneration`) from a
shrunken config that keeps every switch of the released one (Omni: windowed encoder, M-RoPE
sections, q/k/v bias, GQA, untied lm_head, vocab 152,064; Qwen3-ASR: Conv2d stem over 100-frame
chunks, windowed attention over 2 chunks, MLP projector, q/k RMSNorm without bias, head width
!= dim / heads, GQA, tied embeddings, vocab 151,936), fill it with deterministic random weights,
save it with `save_pretrained`, rewrite it in the published layout when asked (Omni: the whole
model's `thinker.` names and config, sharded, with stand-in talker / token2wav tensors; Qwen3-ASR:
the original `thinker.` release) and write the family's tokenizer files beside it.

The tokenizer files are the real Qwen BPE (`vocab.json`, `merges.txt` and the pipeline of
`tokenizer.json` from the shared `qwen2_audio_tokenizer` fixture) with the family's added tokens
at their released ids. Confirmed against the released configs: Omni `<|AUDIO|>` 151646,
`<|audio_bos|>` 151647, `<|audio_eos|>` 151648, `<|IMAGE|>` 151655, `<|VIDEO|>` 151656;
Qwen3-ASR `<|audio_start|>` 151669, `<|audio_end|>` 151670, `<|audio_pad|>` 151676, `<asr_text>`
151704, `<timestamp>` 151705. The other Omni vision/tool ids follow Qwen2.5's table (not
checked); Qwen3-ASR's 151671..151674 follow Qwen3-Omni's table (`<tts_pad>`, ...). Added tokens
must have consecutive ids in the `tokenizers` library, so the ids whose released names were not
found (151675, 151677..151703) hold stand-ins named `<|unverified_ID|>`.
transformers is imported lazily; it is a test-only dependency.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lalm.checkpoint.safetensors_io import read_checkpoint_dir, write_checkpoint_dir, write_json
from lalm.testing.models import randomize_

_QWEN2_5_ADDED = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>",
    151649: "<|box_end|>", 151650: "<|quad_start|>", 151651: "<|quad_end|>",
    151654: "<|vision_pad|>", 151657: "<tool_call>", 151658: "</tool_call>",
    151659: "<|fim_prefix|>", 151660: "<|fim_middle|>", 151661: "<|fim_suffix|>",
    151662: "<|fim_pad|>", 151663: "<|repo_name|>", 151664: "<|file_sep|>",
}
#: Qwen2.5-Omni's added tokens (id -> content); the audio and vision slots renamed.
OMNI_ADDED_TOKENS = {**_QWEN2_5_ADDED, 151646: "<|AUDIO|>", 151647: "<|audio_bos|>",
                     151648: "<|audio_eos|>", 151652: "<|vision_bos|>",
                     151653: "<|vision_eos|>", 151655: "<|IMAGE|>", 151656: "<|VIDEO|>"}
#: Qwen3-ASR's added tokens (the checked ones; see the module docstring).
ASR_ADDED_TOKENS = {
    **_QWEN2_5_ADDED, 151646: "<|object_ref_start|>", 151647: "<|object_ref_end|>",
    151648: "<|box_start|>", 151652: "<|vision_start|>", 151653: "<|vision_end|>",
    151655: "<|image_pad|>", 151656: "<|video_pad|>", 151665: "<tool_response>",
    151666: "</tool_response>", 151667: "<think>", 151668: "</think>",
    151669: "<|audio_start|>", 151670: "<|audio_end|>", 151671: "<tts_pad>",
    151672: "<tts_text_bos>", 151673: "<tts_text_eod>", 151674: "<tts_text_bos_single>",
    151676: "<|audio_pad|>", 151704: "<asr_text>", 151705: "<timestamp>",
}
_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>",
                "</think>", "<asr_text>", "<timestamp>", "<|fim_prefix|>", "<|fim_middle|>",
                "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}

# ChatML with each family's audio span (Omni: `<|audio_bos|><|AUDIO|><|audio_eos|>`, expanded by
# the processor; Qwen3-ASR: `<|audio_start|><|audio_pad|><|audio_end|>`).
_OMNI_SYSTEM = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, "
                "capable of perceiving auditory and visual inputs, as well as generating text "
                "and speech.")
_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n{SYSTEM}<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'audio' %}{AUDIO}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OMNI_CHAT_TEMPLATE = _CHAT_TEMPLATE.replace("{SYSTEM}", _OMNI_SYSTEM).replace(
    "{AUDIO}", "<|audio_bos|><|AUDIO|><|audio_eos|>")
ASR_CHAT_TEMPLATE = _CHAT_TEMPLATE.replace("{SYSTEM}", "").replace(
    "{AUDIO}", "<|audio_start|><|audio_pad|><|audio_end|>")


def omni_reference_config(n_layer: int = 2, n_window: int = 8) -> Any:
    """A shrunken `transformers.Qwen2_5OmniThinkerConfig`: 128 mel bins, chunks of 2 * n_window
    frames, head width 16 with M-RoPE sections [2, 3, 3] (the released [16, 24, 24] scaled),
    4 query / 2 key-value heads, q/k/v bias, untied lm_head, vocab 152,064; an empty vision
    tower (lalm has none)."""
    import transformers

    return transformers.Qwen2_5OmniThinkerConfig(
        audio_config={"d_model": 32, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
                      "encoder_layers": n_layer, "num_mel_bins": 128, "n_window": n_window,
                      "output_dim": 64, "max_source_positions": 1500},
        vision_config={"depth": 0, "embed_dim": 8, "hidden_size": 8, "intermediate_size": 8,
                       "num_heads": 1, "out_hidden_size": 64, "fullatt_block_indexes": []},
        text_config={"vocab_size": 152064, "hidden_size": 64, "intermediate_size": 96,
                     "num_hidden_layers": n_layer, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
                     "max_position_embeddings": 4096,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                         "mrope_section": [2, 3, 3]}},
        tie_word_embeddings=False,
        # read by get_rope_index, absent from the class's own fields (the released file has it)
        vision_start_token_id=151652, vision_end_token_id=151653,
    )


def asr_reference_config(n_layer: int = 2) -> Any:
    """A shrunken `transformers.Qwen3ASRConfig`: 128 mel bins, the released chunking (n_window
    50: 13 positions per 100-frame chunk) with attention windows of 2 chunks, Conv2d stem of 8
    channels, head width 32 with 4 query / 2 key-value heads on a 64-wide decoder, q/k RMSNorm,
    tied embeddings, vocab 151,936."""
    import transformers

    return transformers.Qwen3ASRConfig(
        audio_config={"d_model": 32, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
                      "encoder_layers": n_layer, "num_mel_bins": 128, "output_dim": 64,
                      "n_window": 50, "n_window_infer": 200, "downsample_hidden_size": 8,
                      "max_position_embeddings": 13},
        text_config={"vocab_size": 151936, "hidden_size": 64, "intermediate_size": 96,
                     "num_hidden_layers": n_layer, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-6,
                     "max_position_embeddings": 4096, "tie_word_embeddings": True,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        tie_word_embeddings=True,
    )


def write_family_tokenizer(directory: str | Path, base_dir: str | Path, family: str) -> None:
    """Write a family's tokenizer files into ``directory``.

    Args:
        directory: target folder.
        base_dir: the shared `qwen2_audio_tokenizer` fixture (real Qwen BPE files).
        family: "qwen2_5_omni" or "qwen3_asr".
    """
    added, template, extra = {
        "qwen2_5_omni": (OMNI_ADDED_TOKENS, OMNI_CHAT_TEMPLATE,
                         {"processor_class": "Qwen2_5OmniProcessor",
                          "extra_special_tokens": {"audio_token": "<|AUDIO|>",
                                                   "audio_bos_token": "<|audio_bos|>",
                                                   "audio_eos_token": "<|audio_eos|>"}}),
        "qwen3_asr": (ASR_ADDED_TOKENS, ASR_CHAT_TEMPLATE,
                      {"processor_class": "Qwen3ASRProcessor",
                       "extra_special_tokens": {"audio_token": "<|audio_pad|>",
                                                "audio_bos_token": "<|audio_start|>",
                                                "audio_eos_token": "<|audio_end|>"}}),
    }[family]
    directory, base = Path(directory), Path(base_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(base / name, directory / name)
    added = {i: added.get(i, f"<|unverified_{i}|>") for i in range(min(added), max(added) + 1)}
    entries = [{"id": i, "content": text, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": text not in _NOT_SPECIAL}
               for i, text in sorted(added.items())]
    pipeline = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    pipeline["added_tokens"] = entries
    write_json(directory / "tokenizer.json", pipeline)
    decoder = {str(e["id"]): {k: v for k, v in e.items() if k != "id"} for e in entries}
    write_json(directory / "tokenizer_config.json", {
        "add_prefix_space": False, "added_tokens_decoder": decoder, "bos_token": None,
        "chat_template": template, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768,
        "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None, **extra,
    })
    write_json(directory / "chat_template.json", {"chat_template": template})


def _reference(model: Any, seed: int, std: float) -> Any:
    randomize_(model, seed=seed, std=std)
    return model.eval()


def save_omni_checkpoint(directory: str | Path, tokenizer_dir: str | Path, *,
                         whole: bool = True, config: Any = None, seed: int = 0,
                         std: float = 0.1, max_shard_bytes: int = 20_000_000) -> Any:
    """Save a random Qwen2.5-Omni thinker, in the whole model's layout by default.

    Args:
        directory: target folder.
        tokenizer_dir: the shared `qwen2_audio_tokenizer` fixture.
        whole: rewrite as the published whole model: config.json `qwen2_5_omni` with the
            thinker's config as `thinker_config`, weights renamed `thinker.*` in shards with an
            index, plus stand-in `talker.*` / `token2wav.*` tensors (random: lalm must leave
            them out, their values do not matter). False: the thinker-only directory
            `save_pretrained` writes.
        config: a `Qwen2_5OmniThinkerConfig` (default `omni_reference_config()`).
        seed, std: weight seed and scale.

    Returns:
        The reference thinker in eval mode.
    """
    import torch
    import transformers

    model = transformers.Qwen2_5OmniThinkerForConditionalGeneration(
        config or omni_reference_config())
    model = _reference(model, seed, std)
    directory = Path(directory)
    model.save_pretrained(directory)
    if whole:
        state = {f"thinker.{k}": v for k, v in read_checkpoint_dir(directory).items()}
        gen = torch.Generator().manual_seed(seed)
        state["talker.thinker_to_talker_proj.weight"] = torch.randn(8, 64, generator=gen)
        state["token2wav.code2wav_bigvgan_model.conv_pre.weight"] = torch.randn(
            8, 4, 7, generator=gen)
        (directory / "model.safetensors").unlink()
        write_checkpoint_dir(state, directory, max_shard_bytes)
        thinker = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        write_json(directory / "config.json", {
            "architectures": ["Qwen2_5OmniModel"], "model_type": "qwen2_5_omni",
            "enable_audio_output": True, "thinker_config": thinker,
            "talker_config": {"model_type": "qwen2_5_omni_talker"},
            "token2wav_config": {"model_type": "qwen2_5_omni_token2wav"},
        })
    write_family_tokenizer(directory, tokenizer_dir, "qwen2_5_omni")
    shutil.copy(Path(tokenizer_dir) / "preprocessor_config.json",
                directory / "preprocessor_config.json")
    return model


def save_asr_checkpoint(directory: str | Path, tokenizer_dir: str | Path, *,
                        original: bool = False, config: Any = None, seed: int = 0,
                        std: float = 0.1) -> Any:
    """Save a random Qwen3-ASR model with its tokenizer files.

    Args:
        directory: target folder.
        tokenizer_dir: the shared `qwen2_audio_tokenizer` fixture.
        original: rewrite in the original release's layout (config under `thinker_config`,
            weights `thinker.audio_tower.*` with `proj1` / `proj2`, `thinker.model.*`,
            `thinker.lm_head.weight`); False: what `save_pretrained` writes (the -hf layout).
        config: a `Qwen3ASRConfig` (default `asr_reference_config()`).
        seed, std: weight seed and scale.

    Returns:
        The reference model in eval mode.
    """
    import transformers

    model = transformers.Qwen3ASRForConditionalGeneration(config or asr_reference_config())
    model = _reference(model, seed, std)
    directory = Path(directory)
    model.save_pretrained(directory)
    if original:
        renames = (("model.multi_modal_projector.linear_1.", "thinker.audio_tower.proj1."),
                   ("model.multi_modal_projector.linear_2.", "thinker.audio_tower.proj2."),
                   ("model.audio_tower.", "thinker.audio_tower."),
                   ("model.language_model.", "thinker.model."))
        state = {}
        for key, value in read_checkpoint_dir(directory).items():
            for old, new in renames:
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            state[key] = value.clone()
        state["thinker.lm_head.weight"] = state["thinker.model.embed_tokens.weight"].clone()
        (directory / "model.safetensors").unlink()
        write_checkpoint_dir(state, directory)
        hf = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        thinker = {k: hf.pop(k) for k in ("audio_config", "text_config", "audio_token_id")}
        write_json(directory / "config.json", {**hf, "thinker_config": thinker})
    write_family_tokenizer(directory, tokenizer_dir, "qwen3_asr")
    write_json(directory / "preprocessor_config.json", {
        "feature_extractor_type": "Qwen3ASRFeatureExtractor", "feature_size": 128,
        "hop_length": 160, "n_fft": 400, "n_window": 50, "padding_side": "right",
        "padding_value": 0.0, "processor_class": "Qwen3ASRProcessor",
        "return_attention_mask": True, "sampling_rate": 16000,
    })
    return model
