"""Decoding within bounds: the duration limit checked from the header before decoding and while
decoding, block decoding equal to the whole-file decode, absurd rates and channel counts and
unusable file names refused, and every caller passing its limit (issue 13.4, 13.6)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from lalm.audio import MAX_CHANNELS, SAMPLE_RATE, load_audio, stream_audio
from lalm.data.check import check_manifest
from lalm.data.manifest import AudioRef, Example, ExampleTask, dumps_example
from lalm.errors import AudioError, AudioTooLongError


class CountingFile(io.BytesIO):
    """A real in-memory binary file that counts the bytes its reader takes."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out

    def readinto(self, buffer) -> int:  # soundfile reads through readinto
        n = super().readinto(buffer)
        self.bytes_read += n
        return n


def _encode(samples: np.ndarray, rate: int, fmt: str = "FLAC", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((round(seconds * rate), channels))).astype(np.float32)


@pytest.mark.parametrize("rate,channels,fmt", [(44100, 2, "WAV"), (48000, 3, "FLAC"),
                                               (8000, 1, "WAV"), (22050, 1, "FLAC"),
                                               (384000, 8, "FLAC"), (16000, 2, "FLAC")])
def test_block_decoding_equals_the_whole_file_decode(rate, channels, fmt):
    # long enough to span several 2**18-sample blocks; the reference is what load_audio did
    # before blocks: read all, average the channels, resample in one shot
    data = _encode(_noise(max(3.0, 1.5 * 2**18 / rate), rate, channels), rate, fmt)
    whole, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = whole[:, 0] if channels == 1 else whole.mean(axis=1, dtype=np.float32)
    reference = mono if rate == SAMPLE_RATE else soxr.resample(mono, rate, SAMPLE_RATE, "HQ")
    blocks = list(stream_audio(data))
    assert len(blocks) > 1
    ours = load_audio(data)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_array_equal(np.concatenate(blocks), ours)
    # soxr's stream keeps its filter state between blocks: equal to one-shot (0.0 measured)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_header_duration_is_refused_before_decoding():
    data = _encode(_noise(40.0, SAMPLE_RATE), SAMPLE_RATE)  # ~1 MB of 16 kHz FLAC
    source = CountingFile(data)
    with pytest.raises(AudioTooLongError, match=r"longer than max_seconds=30 \(the header "
                                                r"declares 40\.0 s\)"):
        load_audio(source, max_seconds=30)
    assert source.bytes_read < len(data) // 10  # the header, not the audio


def test_eight_channel_384_khz_flac_is_refused_from_its_header():
    data = _encode(_noise(2.0, 384000, 8), 384000)
    source = CountingFile(data)
    with pytest.raises(AudioTooLongError, match="the header declares 2.0 s"):
        load_audio(source, max_seconds=1)
    assert source.bytes_read < len(data) // 10
    assert load_audio(data, max_seconds=2).shape == (2 * SAMPLE_RATE,)


def test_a_flac_that_declares_no_length_is_an_audio_error():
    # a FLAC whose STREAMINFO total is 0 ("unknown", as streaming encoders write) gives no
    # header duration (libsndfile reports 2**63 - 1 frames); libsndfile cannot read it either,
    # and that is a typed error, not a refusal "from the header"
    data = bytearray(_encode(_noise(1.0, SAMPLE_RATE), SAMPLE_RATE))
    field = int.from_bytes(data[18:26], "big")
    data[18:26] = (field & ~((1 << 36) - 1)).to_bytes(8, "big")
    with pytest.raises(AudioError, match="corrupt or truncated"):
        load_audio(bytes(data), max_seconds=0.5)


def test_the_ffmpeg_fallback_stops_at_the_limit_and_enforces_it(tmp_path, monkeypatch):
    # a stand-in ffmpeg (none is installed here): it ignores -t and prints 4 s16le samples, so
    # the limit is enforced on what comes back as well
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "ffmpeg"
    exe.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args; cat > /dev/null; '
                   'printf "\\000\\100\\000\\300\\000\\100\\000\\300"\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"\x00\x01 an m4a soundfile cannot read")
    assert load_audio(path, max_seconds=1).shape == (4,)
    with pytest.raises(AudioTooLongError, match="longer than max_seconds=0.0001"):
        load_audio(path, max_seconds=1e-4)  # 1.6 samples
    args = (tmp_path / "args").read_text().split()
    assert float(args[args.index("-t") + 1]) == pytest.approx(1e-4 + 2 / SAMPLE_RATE, abs=1e-6)


@pytest.mark.parametrize("rate", [1, 999, 384_001])
def test_absurd_rates_are_refused(rate):
    data = _encode(np.zeros((100, 1), np.float32), rate, "WAV")  # 1 Hz: 100 s from 244 bytes
    with pytest.raises(AudioError, match=f"absurd sample rate {rate} Hz"):
        load_audio(data)


def test_lowest_allowed_rate_decodes():
    assert load_audio(_encode(np.zeros((1000, 1), np.float32), 1000, "WAV")).shape == (16000,)


def test_absurd_channel_count_is_refused():
    data = _encode(np.zeros((10, MAX_CHANNELS + 1), np.float32), SAMPLE_RATE, "WAV")
    with pytest.raises(AudioError, match=f"absurd channel count {MAX_CHANNELS + 1}"):
        load_audio(data)


@pytest.mark.parametrize("name", ["a" * 300 + ".wav", "nul\0byte.wav"])
def test_unusable_file_names_are_audio_errors_naming_the_file(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(AudioError, match="cannot read") as caught:
        load_audio(path)
    assert str(caught.value).startswith(path)


def test_data_check_stops_decoding_at_the_limit(tmp_path):
    sf.write(tmp_path / "long.flac", _noise(40.0, SAMPLE_RATE), SAMPLE_RATE)
    sf.write(tmp_path / "ok.flac", _noise(2.0, SAMPLE_RATE), SAMPLE_RATE)
    lines = [dumps_example(Example(i, (AudioRef(p, **w),), ExampleTask("asr"), "text"))
             for i, p, w in [("long", "long.flac", {}), ("ok", "ok.flac", {}),
                             ("window", "long.flac", {"offset": 35.0, "duration": 4.0})]]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    report = check_manifest(manifest, max_seconds=30)
    assert [p.where for p in report.problems] == ["long"]
    assert "the header declares 40.0 s" in report.problems[0].reason
    assert "longer than 30 s" in report.problems[0].reason
    assert sorted(report.durations) == [2.0, 4.0]  # a window of the long file is fine
    assert report.sample_rates == {SAMPLE_RATE: 2}


def test_stream_audio_is_lazy_and_yields_blocks_of_bounded_size(tmp_path):
    path = Path(tmp_path / "a.flac")
    sf.write(path, _noise(20.0, 48000, 2), 48000)
    sizes = [b.shape[0] for b in stream_audio(path)]
    assert sum(sizes) == 20 * SAMPLE_RATE and len(sizes) > 4
    # a block of 2**18 samples over 2 channels at 48 kHz is ~43,700 samples at 16 kHz (the
    # resampler's delay moves a few hundred between blocks)
    assert max(sizes) < 2**18 // 2 * SAMPLE_RATE // 48000 + 1000


@pytest.mark.parametrize("rate,channels", [(16000, 2), (8000, 1)])
def test_finite_samples_that_overflow_when_mixed_or_resampled_are_refused(rate, channels):
    # found by test_audio_fuzz: float samples near float32's limit are finite in the file, but
    # their channel mean or their resampling is inf / NaN
    loud = np.full((4000, channels), 3e38, np.float32)
    loud[::2] *= -1 if channels == 1 else 1
    with pytest.raises(AudioError, match="overflows float32"):
        load_audio(_encode(loud, rate, "WAV", "FLOAT"))
