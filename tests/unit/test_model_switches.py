"""The model switches of the Qwen2.5-Omni thinker and Qwen3-ASR (no reference needed here;
tests/parity/test_qwen2_5_omni.py and test_qwen3_asr.py compare them with transformers)."""

from __future__ import annotations

import pytest
import torch

from lalm.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig
from lalm.model import AudioLanguageModel, TextDecoder
from lalm.model.layers import mrope_cos_sin, rope_cos_sin, rope_inv_freq
from lalm.testing.models import random_features, randomize_

OMNI_ENCODER = {"n_mels": 128, "n_ctx": 1500, "dim": 32, "n_head": 4, "n_layer": 2,
                "hidden_dim": 64, "n_window": 8}
ASR_ENCODER = {**OMNI_ENCODER, "n_ctx": 13, "n_window": 50, "window_chunks": 2,
               "stem": "conv2d", "stem_channels": 8, "key_bias": True}
DECODER = {"vocab_size": 300, "dim": 64, "n_layer": 2, "n_head": 4, "n_kv_head": 2,
           "hidden_dim": 96, "max_seq_len": 256}


def _model(encoder: dict, projector: dict | None = None, decoder: dict | None = None,
           seed: int = 0) -> AudioLanguageModel:
    config = ModelConfig(encoder=EncoderConfig(**encoder),
                         projector=ProjectorConfig(**(projector or {})),
                         decoder=DecoderConfig(**{**DECODER, **(decoder or {})}))
    model = AudioLanguageModel(config)
    randomize_(model, seed, std=0.1)
    return model.eval()


@pytest.mark.parametrize("encoder,projector,lens,rows", [
    # Omni: n = sum over 16-frame chunks of (len - 1) // 2 + 1, then n // 2 rows
    (OMNI_ENCODER, {}, [37, 16, 5, 50], [9, 4, 1, 12]),
    # Qwen3-ASR: 13 rows per full 100-frame chunk, three stride-2 convs of the rest, no pool
    (ASR_ENCODER, {"kind": "mlp"}, [370, 160, 5, 450, 200], [48, 21, 1, 59, 26]),
])
def test_windowed_encoder_rows_and_batched_equals_single(encoder, projector, lens, rows):
    model = _model(encoder, projector)
    features, feature_lens = random_features(lens, 128, seed=1)
    assert model.audio_row_counts(feature_lens).tolist() == rows
    with torch.no_grad():
        batched = model.embed_audio(features, feature_lens)
        for i, length in enumerate(lens):
            alone = model.embed_audio(features[i:i + 1, :, :length], feature_lens[i:i + 1])[0]
            assert batched[i].shape == (rows[i], DECODER["dim"])
            torch.testing.assert_close(batched[i], alone, rtol=1e-5, atol=1e-5)


def test_windowed_encoder_sees_only_its_window():
    """A change in one attention window's frames leaves the other windows' rows alone, and the
    frames past a clip's length (the lookahead frames) are ignored."""
    model = _model(OMNI_ENCODER)
    features, lens = random_features([64], 128, seed=2)
    changed = features.clone()
    changed[:, :, 48:] += 1.0  # the last 16-frame chunk and the lookahead frames
    with torch.no_grad():
        before = model.encoder(features, lens)[0]
        after = model.encoder(changed, lens)[0]
    torch.testing.assert_close(before[:, :24], after[:, :24])  # 8 positions per chunk
    assert not torch.allclose(before[:, 24:], after[:, 24:])


def test_windowed_encoder_has_no_stored_positions_and_no_length_limit():
    model = _model(ASR_ENCODER, {"kind": "mlp"})
    assert model.encoder.max_frames is None
    assert _model({**OMNI_ENCODER, "n_window": None}).encoder.max_frames == 3000
    features, lens = random_features([3100], 128, seed=3)  # longer than 30 s of frames
    with torch.no_grad():
        rows = model.embed_audio(features, lens)
    assert rows[0].shape[0] == 31 * 13
    names = set(model.state_dict())
    assert "encoder.positional_embedding" not in names
    assert {"encoder.conv2d1.weight", "encoder.conv_out.weight", "encoder.blocks.0.attn.key.bias",
            "projector.hidden.weight", "projector.proj.weight"} <= names
    assert "encoder.conv1.weight" not in names


def test_mrope_with_equal_rows_is_rope_and_sections_pick_rows():
    inv_freq = rope_inv_freq(16, torch.tensor([10000.0, 10000.0]))
    pos = torch.randint(0, 50, (2, 5))
    cos1, sin1 = rope_cos_sin(pos, inv_freq, torch.float32)
    cos3, sin3 = mrope_cos_sin(pos.expand(3, -1, -1), inv_freq, [2, 3, 3], torch.float32)
    assert torch.equal(cos1, cos3) and torch.equal(sin1, sin3)
    rows = torch.stack([pos, pos + 7, pos + 11])
    cos, _ = mrope_cos_sin(rows, inv_freq, [2, 3, 3], torch.float32)
    for row, (lo, hi) in zip(rows, [(0, 2), (2, 5), (5, 8)]):
        expect, _ = rope_cos_sin(row, inv_freq, torch.float32)
        torch.testing.assert_close(cos[..., lo:hi], expect[..., lo:hi])
        torch.testing.assert_close(cos[..., 8 + lo:8 + hi], expect[..., 8 + lo:8 + hi])


def test_decoder_accepts_mrope_positions():
    decoder = TextDecoder(DecoderConfig(**DECODER, mrope_section=[2, 3, 3]))
    randomize_(decoder, 0, std=0.1)
    embeds = torch.randn(2, 6, DECODER["dim"])
    pos = torch.arange(6).expand(2, -1)
    with torch.no_grad():
        plain = decoder(embeds, pos)
        equal = decoder(embeds, pos.expand(3, -1, -1))
        shifted = decoder(embeds, torch.stack([pos, pos + 3, pos]))
    assert torch.equal(plain, equal)
    assert not torch.allclose(plain, shifted)


def test_mrope_section_is_checked():
    with pytest.raises(ValueError, match="mrope_section"):
        DecoderConfig(**DECODER, mrope_section=[2, 3, 4])


def test_tied_embeddings_stay_tied_through_loading_and_casting():
    model = _model(OMNI_ENCODER, decoder={"tie_embeddings": True})
    state = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.device("meta"):
        fresh = AudioLanguageModel(model.config)
    fresh.load_state_dict(state, strict=True, assign=True)
    fresh.to(torch.float64)
    assert fresh.decoder.lm_head.weight is fresh.decoder.embed.weight
    assert fresh.decoder.lm_head.weight.dtype == torch.float64


def test_encoder_switches_are_checked():
    with pytest.raises(ValueError, match="needs encoder.n_window"):
        EncoderConfig(stem="conv2d")
    with pytest.raises(ValueError, match="projector.kind"):
        ProjectorConfig(kind="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positions of one chunk"):
        _model({**ASR_ENCODER, "n_ctx": 12}, {"kind": "mlp"})


@pytest.mark.parametrize("encoder,projector", [(OMNI_ENCODER, {}), (ASR_ENCODER, {"kind": "mlp"})])
def test_windowed_encoder_in_bf16_follows_fp32(encoder, projector):
    model = _model(encoder, projector)
    features, lens = random_features([230, 64], 128, seed=4)
    with torch.no_grad():
        reference = torch.cat(model.embed_audio(features, lens))
        half = torch.cat(model.to(torch.bfloat16).embed_audio(features, lens))
    assert half.dtype == torch.bfloat16
    error = (half.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.05
