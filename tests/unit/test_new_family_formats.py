"""Qwen2.5-Omni and Qwen3-ASR config translation, format detection and the transcript parser
(no transformers needed; tests/parity/ compares the models with it)."""

from __future__ import annotations

import copy

import pytest
import torch

from lalm.checkpoint import qwen2_5_omni, qwen3_asr
from lalm.checkpoint.formats import detect_format, native_format
from lalm.checkpoint.qwen3_asr import AsrOutput, parse_asr_output
from lalm.config import ModelConfig
from lalm.errors import CheckpointError
from lalm.model import AudioLanguageModel

# The released sizes (Qwen/Qwen2.5-Omni-7B's thinker; Qwen/Qwen3-ASR-0.6B), written out.
OMNI_7B = {
    "model_type": "qwen2_5_omni", "architectures": ["Qwen2_5OmniModel"],
    "thinker_config": {
        "model_type": "qwen2_5_omni_thinker", "audio_token_index": 151646,
        "audio_config": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                         "encoder_ffn_dim": 5120, "num_mel_bins": 128, "n_window": 100,
                         "output_dim": 3584, "max_source_positions": 1500},
        "text_config": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "intermediate_size": 18944,
                        "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
                        "max_position_embeddings": 32768, "use_sliding_window": False},
    },
    "talker_config": {}, "token2wav_config": {},
}
ASR_06B = {
    "model_type": "qwen3_asr", "tie_word_embeddings": True,
    "audio_config": {"d_model": 896, "encoder_layers": 18, "encoder_attention_heads": 14,
                     "encoder_ffn_dim": 3584, "num_mel_bins": 128, "output_dim": 1024,
                     "n_window": 50, "n_window_infer": 800, "downsample_hidden_size": 480},
    "text_config": {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28,
                    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                    "intermediate_size": 3072, "vocab_size": 151936, "rope_theta": 1000000.0},
}


def test_released_omni_config_builds_the_thinker():
    fmt = detect_format(OMNI_7B, "config.json")
    assert fmt.name == "qwen2_5_omni"
    config = fmt.config_from_hf(OMNI_7B, "config.json")
    assert (config.encoder.n_window, config.decoder.mrope_section, config.decoder.head_dim,
            config.decoder.tie_embeddings) == (100, [16, 24, 24], 128, False)
    assert native_format(config) == "qwen2_5_omni"
    with torch.device("meta"):
        model = AudioLanguageModel(config)
    # 1 s (100 frames): 50 positions, 25 audio tokens; 2 s + 1 frame: one more chunk
    assert model.audio_row_counts(torch.tensor([100, 201])).tolist() == [25, 50]
    assert qwen2_5_omni.config_to_hf(config)["model_type"] == "qwen2_5_omni_thinker"
    assert config == ModelConfig.from_name("qwen2.5-omni-7b")


def test_released_asr_config_builds_the_model():
    fmt = detect_format(ASR_06B, "config.json")
    assert fmt.name == "qwen3_asr"
    config = fmt.config_from_hf(ASR_06B, "config.json")
    assert (config.encoder.stem, config.encoder.window_chunks, config.projector.kind,
            config.decoder.qk_norm, config.decoder.tie_embeddings) == ("conv2d", 8, "mlp",
                                                                       True, True)
    assert native_format(config) == "qwen3_asr"
    with torch.device("meta"):
        model = AudioLanguageModel(config)
    assert model.decoder.lm_head.weight is model.decoder.embed.weight
    assert config == ModelConfig.from_name("qwen3-asr-0.6b")
    # 13 rows per full 100-frame chunk, then three stride-2 convolutions of the rest
    assert model.audio_row_counts(torch.tensor([100, 250, 7])).tolist() == [13, 33, 1]
    original = {"model_type": "qwen3_asr", "thinker_config": {
        k: ASR_06B[k] for k in ("audio_config", "text_config")}}
    assert qwen3_asr.config_from_hf(original, "config.json") == config


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["thinker_config"]["text_config"].update(use_sliding_window=True),
     "use_sliding_window"),
    (lambda c: c["thinker_config"]["audio_config"].update(n_window="100"), "n_window"),
    (lambda c: c["thinker_config"].update(text_config=[1]), "text_config"),
    (lambda c: c["thinker_config"]["text_config"]["rope_scaling"].update(
        mrope_section=[16, 24]), "mrope_section"),
])
def test_bad_omni_configs_are_checkpoint_errors(edit, match):
    config = copy.deepcopy(OMNI_7B)
    edit(config)
    with pytest.raises(CheckpointError, match=match):
        qwen2_5_omni.config_from_hf(config, "config.json")


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["text_config"].update(attention_bias=True), "attention_bias"),
    (lambda c: c["audio_config"].update(n_window_infer=50), "n_window_infer"),
    (lambda c: c["text_config"].update(head_dim=1.5), "head_dim"),
])
def test_bad_asr_configs_are_checkpoint_errors(edit, match):
    config = copy.deepcopy(ASR_06B)
    edit(config)
    with pytest.raises(CheckpointError, match=match):
        qwen3_asr.config_from_hf(config, "config.json")


def test_key_maps_refuse_unknown_keys_and_drop_only_the_unused_omni_parts():
    with pytest.raises(CheckpointError, match="audio_tower.bogus"):
        qwen3_asr.to_lalm({"thinker.audio_tower.bogus.weight": torch.zeros(1)})
    state = {"thinker.model.norm.weight": torch.ones(2), "talker.x": torch.ones(1),
             "token2wav.y": torch.ones(1), "thinker.visual.z": torch.ones(1),
             "thinker.audio_tower.audio_bos_eos_token.weight": torch.ones(2, 2),
             "thinker.model.embed_tokens.weight": torch.ones(3, 2)}
    out = qwen2_5_omni.to_lalm(state)
    assert set(out) == {"decoder.norm.weight", "decoder.embed.weight", "decoder.lm_head.weight"}
    with pytest.raises(CheckpointError, match="lm_head_extra"):
        qwen2_5_omni.to_lalm({"thinker.lm_head_extra.weight": torch.ones(1)})


@pytest.mark.parametrize("decoded,expected", [
    ("language English<asr_text>Hello world.", AsrOutput("English", "Hello world.")),
    ("language Chinese<asr_text>甚至出现交易几乎停滞的情况。",
     AsrOutput("Chinese", "甚至出现交易几乎停滞的情况。")),
    ("language None<asr_text>", AsrOutput(None, "")),
    (" language  English <asr_text> padded <asr_text>", AsrOutput("English", "padded")),
    ("Forced language: the transcript.", AsrOutput(None, "Forced language: the transcript.")),
    ("<asr_text>no header", AsrOutput(None, "no header")),
])
def test_parse_asr_output(decoded: str, expected: AsrOutput) -> None:
    assert parse_asr_output(decoded) == expected


@pytest.mark.parametrize(("preset", "fmt"), [("tiny-random-omni", "qwen2_5_omni"),
                                             ("tiny-random-asr", "qwen3_asr")])
def test_a_missing_lm_head_is_tied_only_where_the_config_says_so(tmp_path, preset, fmt):
    """A checkpoint without lm_head.weight loads with the embedding as its head when its config
    ties them (Qwen3-ASR), and is an error when its config does not (Omni): a head copied from
    the embedding there would be a silently different model."""
    from safetensors.torch import load_file, save_file

    from lalm.checkpoint import load_model, save_model
    from lalm.testing.models import random_model

    model = random_model(preset)
    save_model(model, tmp_path, format=fmt)
    (weights,) = tmp_path.glob("*.safetensors")
    state = load_file(weights)
    head = [k for k in state if k.endswith("lm_head.weight")]
    assert head or model.config.decoder.tie_embeddings  # a tied save stores the head once
    save_file({k: v for k, v in state.items() if k not in head}, weights, metadata={"format": "pt"})
    if model.config.decoder.tie_embeddings:
        loaded = load_model(tmp_path, precision="fp32")
        assert torch.equal(loaded.decoder.lm_head.weight, model.decoder.embed.weight)
    else:
        with pytest.raises(CheckpointError, match="lm_head.weight is missing"):
            load_model(tmp_path, precision="fp32")
