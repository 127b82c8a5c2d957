"""Log-mel parity: lalm's real-length features against transformers' WhisperFeatureExtractor
(80 and 128 bins), the Qwen-Audio v1 goldens, and openai-whisper's packaged filterbank.

Clips of 30 s or less are compared with the extractor's default 30-s padded output on the real
frames (and the two lookahead frames where the padded output has them). The 41-s clip uses the
extractor's no-truncation mode (``padding="longest", truncation=False``), which keeps the whole
clip: that is the reference for lalm's untruncated path.
"""

from __future__ import annotations

import numpy as np
import pytest

from lalm.audio import (
    HOP_LENGTH,
    N_SAMPLES,
    SAMPLE_RATE,
    batch_log_mel,
    log_mel_padded,
    log_mel_spectrogram,
    mel_filters,
)

TOLERANCE = 1e-5  # issue 2 asks for <= 1e-4; lalm measures ~1.2e-7 against transformers
# The v1 goldens are fp32 features computed on another machine. fp32 FFT round-off differs
# between CPUs' kernels: on one AVX-512 machine lalm was 2.3e-5 from them while a float64
# computation was 1.9e-5 from them and 1.5e-5 from lalm, so the goldens get the bound.
GOLDEN_TOLERANCE = 1e-4


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Real-ish test audio: a gliding harmonic voice, noise bursts, a tone and silent gaps."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    pitch = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (np.sin(2 * np.pi * 2.1 * t) > 0)
    bursts = rng.standard_normal(n) * (np.sin(2 * np.pi * 0.37 * t + 1) > 0.8)
    gaps = (np.floor(t / 1.7) % 3) != 2  # every third 1.7-s stretch is silent
    audio = (0.2 * voice + 0.05 * bursts + 0.03 * np.sin(2 * np.pi * 3000 * t)) * gaps
    return audio.astype(np.float32)


@pytest.fixture(scope="module")
def extractors():
    transformers = pytest.importorskip("transformers")
    return {n: transformers.WhisperFeatureExtractor(feature_size=n) for n in (80, 128)}


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("seconds", [0.5, 7.3, 30.0, 41.0])
def test_matches_whisper_feature_extractor(extractors, n_mels, seconds):
    audio = speechlike(seconds, seed=int(seconds * 10))
    mel_len = audio.shape[0] // HOP_LENGTH
    untruncated = audio.shape[0] > N_SAMPLES
    reference = extractors[n_mels](
        audio, sampling_rate=SAMPLE_RATE, return_tensors="np",
        **({"padding": "longest", "truncation": False} if untruncated else {}),
    ).input_features[0]
    ours = log_mel_spectrogram(audio, n_mels, lookahead=2).numpy()
    assert ours.shape == (n_mels, mel_len + 2)
    shared = min(mel_len + 2, reference.shape[1])  # real frames + lookahead the reference has
    assert shared >= mel_len
    np.testing.assert_allclose(ours[:, :shared], reference[:, :shared], atol=TOLERANCE, rtol=0)
    if not untruncated:
        np.testing.assert_allclose(log_mel_padded(audio, n_mels).numpy(), reference,
                                   atol=TOLERANCE, rtol=0)


def test_batch_matches_whisper_feature_extractor_batch(extractors):
    clips = [speechlike(s, seed=i) for i, s in enumerate([3.3, 10.0, 0.8, 12.41])]
    reference = extractors[128](clips, sampling_rate=SAMPLE_RATE, return_tensors="np")
    features, lens = batch_log_mel(clips, 128)
    for b, n in enumerate(lens.tolist()):
        np.testing.assert_allclose(features[b, :, : n + 2].numpy(),
                                   reference.input_features[b, :, : n + 2],
                                   atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_matches_qwen_audio_v1_goldens(v1_fixture, name):
    goldens = np.load(v1_fixture / "goldens" / "audio_features.npz")
    waveform, reference = goldens[f"waveform_{name}"], goldens[f"mel_{name}"]
    # the reference keeps the first 30 s (c.wav is 31.5 s): its real frames are those of that cut
    cut = waveform[:N_SAMPLES]
    mel_len = cut.shape[0] // HOP_LENGTH
    ours = log_mel_spectrogram(cut, 80, lookahead=2).numpy()
    shared = min(mel_len + 2, reference.shape[1])
    np.testing.assert_allclose(ours[:, :shared], reference[:, :shared], atol=GOLDEN_TOLERANCE,
                               rtol=0)
    np.testing.assert_allclose(log_mel_padded(waveform, 80).numpy(), reference,
                               atol=GOLDEN_TOLERANCE, rtol=0)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_equals_transformers(n_mels):
    audio_utils = pytest.importorskip("transformers.audio_utils")
    reference = audio_utils.mel_filter_bank(
        num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
        max_frequency=SAMPLE_RATE / 2, sampling_rate=SAMPLE_RATE, norm="slaney",
        mel_scale="slaney").T.astype(np.float32)
    np.testing.assert_array_equal(mel_filters(n_mels).numpy(), reference)


@pytest.mark.slow
def test_filterbank_matches_openai_whisper_assets():
    from lalm.assets import asset_path

    whisper = np.load(asset_path("mel_filters.npz"))
    for n_mels in (80, 128):
        reference = whisper[f"mel_{n_mels}"]
        ours = mel_filters(n_mels).numpy()
        assert ours.shape == reference.shape == (n_mels, 201)
        # librosa rounds each triangle to float32 before scaling it: at most one ulp apart
        np.testing.assert_allclose(ours, reference, rtol=2e-7, atol=1e-9)


def test_ceil_real_length_matches_the_extractor_attention_mask(extractors):
    # Qwen2-Audio's processor counts a clip's frames from the extractor's attention mask
    clips = [speechlike(s, seed=7)[:n] for s, n in [(2.0, 16000 + 37), (1.0, 8000), (1.0, 161)]]
    reference = extractors[128](clips, sampling_rate=SAMPLE_RATE, return_tensors="np",
                                return_attention_mask=True)
    features, lens = batch_log_mel(clips, 128, real_length="ceil")
    assert lens.tolist() == reference.attention_mask.sum(axis=1).tolist() == [101, 50, 2]
    for b, n in enumerate(lens.tolist()):
        np.testing.assert_allclose(features[b, :, : n + 2].numpy(),
                                   reference.input_features[b, :, : n + 2],
                                   atol=TOLERANCE, rtol=0)
