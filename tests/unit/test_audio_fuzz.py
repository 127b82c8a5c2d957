"""Fuzzing load_audio with generated malformed and extreme files (hypothesis).

Every generated input must either decode to finite float32 16 kHz samples or raise AudioError,
within a few seconds and without allocating for what a header claims. Inputs: hand-built WAV
and AU headers over random payloads (1 Hz..384 kHz and absurd rates, 1..8 channels, 8/16/24/32
bit and float PCM, true, zero, "unknown" and hours-long data sizes), then cut short or with bytes
flipped; FLAC/OGG/MP3 streams cut or corrupted; random bytes, bare or behind a real magic number.
"""

from __future__ import annotations

import functools
import io
import signal
import struct
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lalm.audio import SAMPLE_RATE, load_audio
from lalm.errors import AudioError

HOURS_BYTES = 16000 * 2 * 3600 * 9  # 9 h of 16 kHz 16-bit mono
FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SECONDS_PER_INPUT = 10

rates = st.one_of(st.integers(1, 384_000), st.sampled_from([0, 1, 8000, 44100, 384_000, 384_001,
                                                            2**31 - 1, 2**32 - 1]))
data_sizes = st.sampled_from(["true", "true", "zero", "unknown", "hours"])


@contextmanager
def time_limit(seconds: int):
    """Fail (instead of hanging the suite) when the body runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"load_audio ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check(data: bytes) -> None:
    """The property: finite float32 mono samples, or AudioError; never anything else."""
    with time_limit(SECONDS_PER_INPUT):
        try:
            audio = load_audio(data)
        except AudioError as e:
            assert str(e).startswith("<bytes>: ")
            return
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.shape[0] > 0
    assert np.isfinite(audio).all()


def declared(size_kind: str, true_size: int) -> int:
    return {"true": true_size, "zero": 0, "unknown": 0xFFFFFFFF, "hours": HOURS_BYTES}[size_kind]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` as is, cut at a random point, or with a few random bytes overwritten."""
    how = draw(st.sampled_from(["keep", "cut", "flip"]))
    if how == "cut":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    return data


def payload(draw, n_bytes: int) -> bytes:
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()


@st.composite
def wav_files(draw) -> bytes:
    tag, bits = draw(st.sampled_from([(1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)]))
    channels, rate = draw(st.integers(1, 8)), draw(rates)
    block = channels * bits // 8
    body = payload(draw, block * draw(st.integers(0, 300)))
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    size = declared(draw(data_sizes), len(body))
    head = (b"RIFF" + struct.pack("<I", min(36 + size, 0xFFFFFFFF)) + b"WAVE" + b"fmt "
            + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", size))
    return draw(mutated(head + body))


@st.composite
def au_files(draw) -> bytes:
    encoding, width = draw(st.sampled_from([(1, 1), (2, 1), (3, 2), (4, 3), (5, 4), (6, 4),
                                            (7, 8)]))
    channels, rate = draw(st.integers(1, 8)), draw(rates)
    body = payload(draw, channels * width * draw(st.integers(0, 300)))
    size = declared(draw(data_sizes), len(body))
    head = b".snd" + struct.pack(">IIIII", 24, size, encoding, rate, channels)
    return draw(mutated(head + body))


@functools.cache
def encoded(fmt: str, subtype: str, channels: int, rate: int) -> bytes:
    t = np.arange(rate // 2) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 330 * (c + 1) * t) for c in range(channels)], 1)
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@st.composite
def compressed_files(draw) -> bytes:
    fmt, subtype = draw(st.sampled_from([("FLAC", "PCM_16"), ("FLAC", "PCM_24"),
                                         ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]))
    channels = draw(st.sampled_from([1, 2]))
    rate = draw(st.sampled_from([8000, 16000, 44100, 48000]))
    return draw(mutated(encoded(fmt, subtype, channels, rate)))


@st.composite
def random_files(draw) -> bytes:
    magic = draw(st.sampled_from([b"", b"RIFF\xff\xff\xff\xffWAVE", b"fLaC", b"OggS", b"ID3\x03",
                                  b"\xff\xfb\x90\x00", b".snd", b"FORM\x00\x00\x00\x10AIFF"]))
    return magic + payload(draw, draw(st.integers(0, 3000)))


@FUZZ
@given(wav_files())
def test_fuzz_wav_headers_and_payloads(data):
    check(data)


@FUZZ
@given(au_files())
def test_fuzz_au_headers_and_payloads(data):
    check(data)


@FUZZ
@given(compressed_files())
def test_fuzz_cut_and_corrupted_compressed_streams(data):
    check(data)


@FUZZ
@given(random_files())
def test_fuzz_random_bytes(data):
    check(data)


@pytest.mark.parametrize("container", ["wav", "au"])
def test_hours_long_header_allocates_nothing_for_the_claim(container):
    body = np.zeros(16000, dtype="<i2").tobytes()
    if container == "wav":
        head = (b"RIFF" + struct.pack("<I", 36 + HOURS_BYTES) + b"WAVE" + b"fmt "
                + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data"
                + struct.pack("<I", HOURS_BYTES))
    else:  # big-endian 16-bit AU
        head, body = b".snd" + struct.pack(">IIIII", 24, HOURS_BYTES, 3, 16000, 1), body[::-1]
    tracemalloc.start()
    try:
        with time_limit(SECONDS_PER_INPUT):
            try:
                audio = load_audio(head + body)
            except AudioError as e:
                assert "truncated" in str(e)
            else:
                assert audio.shape == (SAMPLE_RATE,)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak} bytes for a 32 kB file"
