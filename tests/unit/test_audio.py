"""lalm.audio: loading, the real-length log-mel and its 30-s padded twin, batching, SpecAugment."""

from __future__ import annotations

import io
import os
import stat
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from lalm.audio import (
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    audio_token_count,
    batch_log_mel,
    load_audio,
    log_mel_padded,
    log_mel_spectrogram,
    mel_filters,
    mel_length,
    spec_augment,
)
from lalm.errors import AudioError, AudioTooLongError


def tone(seconds: float, hz: float = 440.0, rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A tone plus a little noise: float32 [round(seconds * rate)]."""
    n = round(seconds * rate)
    t = np.arange(n) / rate
    noise = np.random.default_rng(seed).standard_normal(n)
    return (0.4 * np.sin(2 * np.pi * hz * t) + 0.01 * noise).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# token counts and filters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mel_len,tokens", [(170, 42), (420, 105), (3000, 750), (1, 0), (3, 1),
                                            (0, 0), (4100, 1025)])
def test_audio_token_count_matches_the_reference_lengths(mel_len, tokens):
    assert audio_token_count(mel_len) == tokens
    n = (mel_len - 1) // 2 + 1
    assert audio_token_count(mel_len) == n // 2


def test_audio_token_count_on_tensors_and_negative_lengths():
    lens = torch.tensor([170, 420, 3000])
    assert audio_token_count(lens).tolist() == [42, 105, 750]
    with pytest.raises(AudioError, match="mel length"):
        audio_token_count(-1)


def test_mel_filters_match_the_fixture_filterbank(v1_fixture):
    reference = np.load(v1_fixture / "mel_filters.npz")["mel_80"]
    ours = mel_filters(80).numpy()
    assert ours.shape == (80, 201) and ours.dtype == np.float32
    # librosa rounds the triangle to float32 before the area scaling: at most one ulp apart
    np.testing.assert_allclose(ours, reference, rtol=2e-7, atol=1e-9)


def test_mel_filters_shape_and_area():
    bank = mel_filters(128)
    assert bank.shape == (128, 201)
    assert (bank >= 0).all() and (bank.sum(dim=1) > 0).all()
    with pytest.raises(AudioError, match="n_mels"):
        mel_filters(0)


# --------------------------------------------------------------------------------------------
# log-mel over the real length
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [160, 400, 16000 + 121, 16000 + 159, 73_000,
                                       N_SAMPLES - 300, N_SAMPLES - 1, N_SAMPLES])
def test_real_length_frames_equal_the_padded_reference(n_samples):
    audio = tone(n_samples / SAMPLE_RATE)[:n_samples]
    mel_len = n_samples // HOP_LENGTH
    padded = log_mel_padded(audio, 80)
    ours = log_mel_spectrogram(audio, 80, lookahead=2)
    assert padded.shape == (80, N_FRAMES)
    assert ours.shape == (80, mel_len + 2) and ours.dtype == torch.float32
    reference_frames = min(mel_len + 2, N_FRAMES)
    torch.testing.assert_close(ours[:, :reference_frames], padded[:, :reference_frames],
                               atol=1e-6, rtol=0)
    # frames the padded reference does not have are the encoder's zero padding
    assert (ours[:, reference_frames:] == 0).all()


def test_floor_counts_the_frames_just_past_the_real_length():
    # quiet tone, then a click in the last samples: only frames L.. see the click, and the
    # reference's max - 8 floor (taken over all 3000 frames) is set by them
    audio = 1e-4 * tone(1.1)[: 16000 + 150]
    audio[-20:] = 0.9
    padded = log_mel_padded(audio, 80)
    assert padded[:, 100:].max() > padded[:, :100].max() + 1
    torch.testing.assert_close(log_mel_spectrogram(audio, 80), padded[:, :100], atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_samples,floor,ceil", [(160, 1, 1), (161, 1, 2), (16_319, 101, 102),
                                                  (N_SAMPLES, 3000, 3000),
                                                  (N_SAMPLES + 17, 3000, 3000)])
def test_mel_length_floor_and_ceil(n_samples, floor, ceil):
    assert mel_length(n_samples, "floor") == floor and mel_length(n_samples, "ceil") == ceil
    audio = tone(n_samples / SAMPLE_RATE + 0.01)[:n_samples]
    assert log_mel_spectrogram(audio, 80, real_length="ceil").shape == (80, ceil)
    with pytest.raises(AudioError, match="real_length"):
        mel_length(n_samples, "round")


def test_longer_than_30_s_is_not_truncated():
    audio = tone(41.0)
    mel = log_mel_spectrogram(audio, 128)
    assert mel.shape == (128, 4100)
    # the last 11 s are a real tone, not the floor of a padded window
    assert mel[:, 3100:].std() > 0.05
    torch.testing.assert_close(log_mel_padded(audio, 128), log_mel_padded(audio[:N_SAMPLES], 128))


def test_silence_sits_on_the_floor():
    mel = log_mel_spectrogram(np.zeros(8000, dtype=np.float32), 80)
    assert torch.equal(mel, torch.full((80, 50), (-10.0 + 4.0) / 4.0))


def test_tensor_input_and_float64_input_agree():
    audio = tone(1.3)
    ref = log_mel_spectrogram(audio, 80)
    torch.testing.assert_close(log_mel_spectrogram(torch.from_numpy(audio), 80), ref)
    torch.testing.assert_close(log_mel_spectrogram(audio.astype(np.float64), 80), ref)


@pytest.mark.parametrize("audio,match", [
    (np.zeros(159, dtype=np.float32), "shorter than one 160-sample hop"),
    (np.zeros((2, 1600), dtype=np.float32), "expected 1-D float"),
    (np.zeros(1600, dtype=np.int16), "expected 1-D float"),
    (np.r_[np.zeros(800), np.nan, np.zeros(800)].astype(np.float32), "NaN or Inf"),
    (np.full(1600, 1e30, dtype=np.float32), "overflows float32"),
])
def test_log_mel_rejects_bad_waveforms(audio, match):
    with pytest.raises(AudioError, match=match):
        log_mel_spectrogram(audio, 80)


def test_batch_equals_single_and_carries_real_lengths():
    clips = [tone(0.73, 300), tone(2.0, 500, seed=1), tone(0.05, 900, seed=2)]
    features, lens = batch_log_mel(clips, 80)
    assert lens.dtype == torch.int64 and lens.tolist() == [73, 200, 5]
    assert features.shape == (3, 80, 202)
    for b, clip in enumerate(clips):
        single = log_mel_spectrogram(clip, 80, lookahead=2)
        torch.testing.assert_close(features[b, :, : lens[b] + 2], single, atol=1e-6, rtol=0)
        assert (features[b, :, lens[b] + 2:] == 0).all()
    with pytest.raises(AudioError, match="audio 1"):
        batch_log_mel([clips[0], np.zeros(10, dtype=np.float32)], 80)


# --------------------------------------------------------------------------------------------
# SpecAugment
# --------------------------------------------------------------------------------------------


def test_spec_augment_masks_only_real_frames_and_is_seeded():
    features = torch.rand(4, 80, 300) + 1.0  # never 0, so masked cells are exactly the zeros
    lens = torch.tensor([300, 120, 37, 250])
    kwargs = {"freq_width": 20, "time_width": 50, "max_time_ratio": 0.5}
    out = spec_augment(features, lens, generator=torch.Generator().manual_seed(3), **kwargs)
    again = spec_augment(features, lens, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(out, again) and not torch.equal(features, out)
    masked = out == 0
    for b, n in enumerate(lens.tolist()):
        assert not masked[b, :, n:].any()
        assert torch.equal(out[b][~masked[b]], features[b][~masked[b]])
        # time spans are whole columns, at most 2 x min(50, n/2) frames in all
        assert masked[b, :, :n].all(dim=0).sum() <= 2 * min(50, n // 2)
    assert masked.any(dim=2).any(dim=0).sum() > 0


def test_spec_augment_rejects_mismatched_lengths():
    with pytest.raises(AudioError, match="feature_lens"):
        spec_augment(torch.zeros(2, 80, 10), torch.tensor([5, 11]))


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def test_fixture_wavs_decode_like_the_reference(v1_fixture):
    goldens = np.load(v1_fixture / "goldens" / "audio_features.npz")
    for name in "ac":  # 16 kHz mono 16-bit: exactly the file samples / 32768
        np.testing.assert_array_equal(load_audio(v1_fixture / f"{name}.wav"),
                                      goldens[f"waveform_{name}"])
    ours, ffmpeg = load_audio(str(v1_fixture / "b.wav")), goldens["waveform_b"]
    assert ours.shape == ffmpeg.shape == (67200,)  # 44.1 kHz stereo -> 16 kHz mono
    assert np.sqrt(np.mean((ours - ffmpeg) ** 2)) < 0.01 * np.sqrt(np.mean(ffmpeg ** 2))


@pytest.mark.parametrize("fmt,subtype,atol", [("WAV", "PCM_16", 0), ("WAV", "PCM_24", 1e-6),
                                              ("WAV", "FLOAT", 0), ("FLAC", "PCM_16", 0),
                                              ("OGG", "VORBIS", 0.1),
                                              ("MP3", "MPEG_LAYER_III", 0.2)])
def test_formats_bytes_files_and_paths(tmp_path, fmt, subtype, atol):
    audio = np.round(tone(0.5) * 32767) / 32768
    data = wav_bytes(audio, SAMPLE_RATE, subtype, fmt)
    path = tmp_path / f"clip.{fmt.lower()}"
    path.write_bytes(data)
    from_bytes = load_audio(data)
    for other in (load_audio(path), load_audio(str(path)), load_audio(io.BytesIO(data))):
        np.testing.assert_array_equal(other, from_bytes)
    assert from_bytes.dtype == np.float32 and from_bytes.ndim == 1
    if fmt != "MP3":  # the MP3 encoder adds priming samples
        assert from_bytes.shape == audio.shape
        np.testing.assert_allclose(from_bytes, audio, atol=atol)


def test_resampling_and_downmix_keep_the_tone():
    stereo = np.stack([tone(1.0, 1000, 44100), tone(1.0, 1000, 44100, seed=4)], axis=1)
    for source in (wav_bytes(stereo, 44100), stereo, stereo.T.copy(), torch.from_numpy(stereo)):
        audio = load_audio(source) if isinstance(source, bytes) else load_audio(source, 44100)
        assert audio.shape == (SAMPLE_RATE,)
        peak_hz = np.argmax(np.abs(np.fft.rfft(audio))) * SAMPLE_RATE / audio.shape[0]
        assert abs(peak_hz - 1000) <= 1


def test_integer_arrays_scale_like_ffmpeg():
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    np.testing.assert_array_equal(load_audio(pcm), pcm / np.float32(32768))
    np.testing.assert_array_equal(load_audio(np.array([128, 192, 0], dtype=np.uint8)),
                                  np.array([0.0, 0.5, -1.0], dtype=np.float32))
    assert load_audio(np.array([1 << 30], dtype=np.int32))[0] == 0.5


def test_max_seconds_refuses_instead_of_truncating():
    data = wav_bytes(tone(3.0), SAMPLE_RATE)
    assert load_audio(data, max_seconds=3.0).shape == (48000,)
    with pytest.raises(AudioTooLongError, match=r"^<bytes>: longer than max_seconds=2\.5"):
        load_audio(data, max_seconds=2.5)  # a file that is too long, not "corrupt"
    with pytest.raises(AudioTooLongError, match="<array>: longer than max_seconds=1"):
        load_audio(tone(3.0), max_seconds=1)


def _wav_header(rate: int, channels: int, bits: int, data_bytes: int, riff_size: int | None = None
                ) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    riff = riff_size if riff_size is not None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes))


def _malformed_cases(tmp_path):
    """(source, kwargs, message pattern) for hand-made bad inputs."""
    good = wav_bytes(tone(1.0), SAMPLE_RATE)
    flac = wav_bytes(tone(1.0), SAMPLE_RATE, fmt="FLAC")
    nan_wav = wav_bytes(np.r_[tone(0.1), np.nan, tone(0.1)], SAMPLE_RATE, "FLOAT")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "a_dir").mkdir()
    os.mkfifo(tmp_path / "pipe.wav")
    hours = _wav_header(16000, 2, 16, 16000 * 4 * 3600 * 5) + b"\x00" * 4000  # claims 5 h
    return [
        (tmp_path / "missing.wav", {}, "missing.wav: no such file"),
        (tmp_path / "a_dir", {}, "a_dir: is a directory"),
        (tmp_path / "pipe.wav", {}, "pipe.wav: not a regular file"),
        (tmp_path / "empty.wav", {}, "empty.wav: empty file"),
        (b"", {}, "<bytes>: empty file"),
        (b"this is plain text, not audio at all\n" * 20, {}, "<bytes>: not a decodable audio"),
        (good[:30], {}, "<bytes>: not a decodable audio"),  # header cut short
        (good[: len(good) // 2], {}, "<bytes>: truncated WAV"),
        (flac[: len(flac) // 2], {}, "<bytes>: corrupt or truncated"),
        (hours, {}, "<bytes>: truncated WAV: the header declares 1152000000 bytes"),
        (_wav_header(16000, 1, 16, 0), {}, "<bytes>: no audio samples"),
        (nan_wav, {}, "<bytes>: contains NaN or Inf"),
        (np.array([0.0, np.inf], dtype=np.float32), {}, "<array>: contains NaN or Inf"),
        (np.zeros(0, dtype=np.float32), {}, "<array>: no audio samples"),
        (np.zeros(100, dtype=np.float32), {"sr": 0}, "absurd sample rate 0 Hz"),
        (np.zeros(100, dtype=np.float32), {"sr": 500_000}, "absurd sample rate 500000 Hz"),
        (np.zeros(100, dtype=np.float32), {"sr": 16000.0}, "sample rate must be an integer"),
        (_wav_header(400_000, 1, 16, 200) + b"\x00" * 200, {}, "absurd sample rate 400000"),
        (np.zeros((2, 2, 100), dtype=np.float32), {}, "expected \\[N\\] or \\[N, C\\]"),
        (np.array(["a", "b"]), {}, "must be float or integer PCM"),
        (np.zeros(100, dtype=np.float32), {"max_seconds": 0}, "max_seconds must be > 0"),
        (good, {"sr": 16000}, "sr is only for array sources"),
        (io.StringIO("RIFF"), {}, "binary mode"),
        (object(), {}, "<file>: not an audio source \\(object\\)"),
        (np.zeros(1, dtype=np.float32), {"sr": 44100}, "too short to give one sample"),
    ]


def test_malformed_inputs_raise_audio_error_naming_the_input(tmp_path):
    for source, kwargs, pattern in _malformed_cases(tmp_path):
        with pytest.raises(AudioError, match=pattern):
            load_audio(source, **kwargs)


def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.wav"
    path.write_bytes(wav_bytes(tone(0.1), SAMPLE_RATE))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything
        pytest.skip("running as root: permissions do not stop reads")
    with pytest.raises(AudioError, match="locked.wav: cannot read"):
        load_audio(path)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def _fake_ffmpeg(tmp_path, monkeypatch, script: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ffmpeg"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_ffmpeg_fallback_plumbing(tmp_path, monkeypatch):
    # a stand-in ffmpeg: records its arguments, swallows stdin, prints s16le [16384, -16384]
    _fake_ffmpeg(tmp_path, monkeypatch,
                 f'echo "$@" > {tmp_path}/args; cat > /dev/null; printf "\\000\\100\\000\\300"\n')
    audio = load_audio(b"\x00\x01 an m4a soundfile cannot read", max_seconds=5)
    np.testing.assert_array_equal(audio, np.array([0.5, -0.5], dtype=np.float32))
    args = (tmp_path / "args").read_text().split()
    assert args[args.index("-ar") + 1] == "16000" and args[args.index("-ac") + 1] == "1"
    assert args[args.index("-f") + 1] == "s16le" and "-t" in args


def test_ffmpeg_fallback_failure_is_an_audio_error(tmp_path, monkeypatch):
    _fake_ffmpeg(tmp_path, monkeypatch,
                 'cat > /dev/null; echo "pipe:0: Invalid data found" >&2; exit 1\n')
    with pytest.raises(AudioError, match="<bytes>: not a decodable.*ffmpeg: pipe:0: Invalid data"):
        load_audio(b"random junk" * 10)
