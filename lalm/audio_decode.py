"""Decoding audio sources to 16 kHz mono float32, block by block and within a duration limit.

Files are read with soundfile (libsndfile: WAV, FLAC, OGG, MP3, ...) in blocks of `_READ_BLOCK`
samples; each block is checked, averaged to mono and resampled by one soxr stream, so decoding
holds one block at the source's rate and channel count, never the whole file. The header's
duration is checked against the limit before anything is decoded, and every block after. Files
soundfile cannot open go to an ``ffmpeg`` executable when one is on PATH. `lalm.audio`
re-exports the public names; import them from there.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr
from torch import Tensor

from lalm.errors import AudioError, AudioTooLongError

SAMPLE_RATE = 16000  # Hz, the rate every model input has
# Source rates and channel counts outside these bounds are refused as absurd: below 1 kHz a
# "recording" is a header trick (a 1 Hz WAV of 144 KB is 20 h, 4.6 GB once at 16 kHz); 384 kHz
# is the highest rate audio hardware records; 64 channels is 7th-order ambisonics (22.2 has 24).
MIN_SOURCE_RATE = 1000  # Hz
MAX_SOURCE_RATE = 384_000  # Hz
MAX_CHANNELS = 64

Seconds = float
AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | np.ndarray | Tensor

_READ_BLOCK = 1 << 18  # samples (frames x channels) per block when decoding: 1 MiB of float32
_UNKNOWN_FRAMES = 1 << 62  # libsndfile reports an unknown length (streamed FLAC) as 2**63 - 1
_FFMPEG_TIMEOUT: Seconds = 600.0


def load_audio(
    source: AudioSource, sr: int | None = None, *, max_seconds: Seconds | None = None
) -> np.ndarray:
    """Decode any common audio source to 16 kHz mono float32.

    Files (WAV, FLAC, OGG, MP3 and the other formats libsndfile reads) are decoded with soundfile;
    when soundfile cannot open one and an ``ffmpeg`` executable is on PATH, ffmpeg decodes it
    (16 kHz mono s16le, as the Qwen-Audio reference does). Integer PCM is scaled by its full range
    (16-bit: ``x / 32768``, as ffmpeg's s16le output divided by 32768); channels are averaged;
    other rates are resampled with soxr (high quality). The samples are the blocks of
    `stream_audio` joined, so decoding never holds more than one block at the source's rate and
    channel count.

    Args:
        source: a path, the bytes of a file, a binary file-like object, or samples as a numpy
            array or torch tensor: [N] mono or [N, C] / [C, N] (the shorter axis is channels),
            float in [-1, 1] or integer PCM.
        sr: sample rate of an array source in Hz (default 16000). Files carry their own rate, so
            passing it with a file is an error.
        max_seconds: refuse (`AudioTooLongError`, an AudioError) sources longer than this: from
            the header's duration before decoding, and while decoding as soon as the limit is
            passed. Nothing is ever truncated silently.

    Returns:
        float32 [N] samples at 16 kHz.

    Raises:
        AudioError: naming the source (path, ``<bytes>``, ``<file>`` or ``<array>``) and the
            problem: missing file, directory, unusable file name, empty file, not audio,
            truncated file, no samples, NaN/Inf samples, absurd rate or channel count, longer
            than ``max_seconds``.
    """
    blocks = list(stream_audio(source, sr, max_seconds=max_seconds))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def stream_audio(
    source: AudioSource, sr: int | None = None, *, max_seconds: Seconds | None = None
) -> Iterator[np.ndarray]:
    """Decode an audio source block by block: the samples of `load_audio`, in pieces.

    A file is read `_READ_BLOCK` samples (all channels together) at a time; each block is
    checked (finite, within ``max_seconds``), averaged to mono and resampled by one soxr
    stream, which gives the same samples as resampling the whole clip at once (identical in
    tests/unit/test_audio_limits.py, which allows 1e-6). The header's duration is checked against
    ``max_seconds`` before anything is decoded. An array source is one block.

    Args:
        source, sr, max_seconds: as for `load_audio`.

    Yields:
        float32 [n] blocks at 16 kHz, in order; their concatenation is the clip. Checks that
        need the whole file (truncation, no samples at all) raise after the last block.

    Raises:
        AudioError: as for `load_audio`, when the block that shows the problem is reached.
    """
    name = _describe(source)
    if max_seconds is not None and not max_seconds > 0:
        raise AudioError(f"{name}: max_seconds must be > 0, got {max_seconds!r}")
    if isinstance(source, (np.ndarray, Tensor)):
        rate = SAMPLE_RATE if sr is None else sr
        _check_rate(rate, name)
        samples = _array_samples(source, name)
        _check_duration(samples.shape[0], rate, max_seconds, name)
        if samples.shape[0] == 0:
            raise AudioError(f"{name}: no audio samples")
        _check_finite(samples, name)
        mono = _Mono16k(rate, name)
        yield mono.push(samples)  # a 16 kHz mono float32 array comes back as itself
        tail = mono.finish()
        if tail.shape[0]:
            yield tail
        return
    if sr is not None:
        raise AudioError(f"{name}: sr is only for array sources; a file carries its own rate")
    with _open_file(source, name) as file:
        _check_riff_length(file, name)
        try:
            sound = sf.SoundFile(file)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            reason = _reason(e)
            if not shutil.which("ffmpeg"):
                raise AudioError(f"{name}: not a decodable audio file ({reason}; "
                                 "ffmpeg is not on PATH to try other formats)") from None
            file.seek(0)
            yield _decode_ffmpeg(file, name, max_seconds, reason)
            return
        with sound:
            yield from _sound_blocks(sound, name, max_seconds)


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, (np.ndarray, Tensor)):
        return "<array>"
    return str(getattr(source, "name", "<file>"))


def _check_rate(rate: object, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise AudioError(f"{name}: sample rate must be an integer, got {rate!r}")
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioError(f"{name}: absurd sample rate {rate} Hz (allowed "
                         f"{MIN_SOURCE_RATE}..{MAX_SOURCE_RATE})")


def _check_duration(n_frames: int, rate: int, max_seconds: Seconds | None, name: str,
                    declared: bool = False) -> None:
    if max_seconds is not None and n_frames > max_seconds * rate:
        held = "the header declares" if declared else "at least"
        raise AudioTooLongError(f"{name}: longer than max_seconds={max_seconds:g} "
                                f"({held} {n_frames / rate:.1f} s)")


def _check_finite(samples: np.ndarray, name: str) -> None:
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: contains NaN or Inf samples")


def _array_samples(array: np.ndarray | Tensor, name: str) -> np.ndarray:
    """float32 [N, C] samples of an array source, integer PCM scaled by its full range."""
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    if array.ndim == 1:
        array = array[:, None]
    elif array.ndim == 2:
        array = array if array.shape[0] >= array.shape[1] else array.T
    else:
        raise AudioError(f"{name}: expected [N] or [N, C] samples, got shape {array.shape}")
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "i":
        return (array / float(1 << (8 * array.itemsize - 1))).astype(np.float32)
    if array.dtype.kind == "u":  # unsigned PCM (8-bit WAV): centred on half range
        half = float(1 << (8 * array.itemsize - 1))
        return ((array - half) / half).astype(np.float32)
    raise AudioError(f"{name}: samples must be float or integer PCM, got dtype {array.dtype}")


class _Mono16k:
    """Blocks of [n, C] float32 samples at ``rate`` in, 16 kHz mono float32 blocks out.

    Channels are averaged per sample; one soxr stream resamples all blocks (soxr keeps the
    filter state between them, so the output equals one-shot resampling of the whole clip).
    """

    def __init__(self, rate: int, name: str) -> None:
        self.name, self.rate, self.frames, self.out = name, rate, 0, 0
        self.stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(
            rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def push(self, block: np.ndarray) -> np.ndarray:
        """float32 [n, C] -> float32 [m] (m may be 0 while the resampler fills)."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
            mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        mono = np.ascontiguousarray(mono, dtype=np.float32)
        self.frames += block.shape[0]
        if self.stream is not None:
            mono = self.stream.resample_chunk(mono, last=False)
        self._check(mono)
        self.out += mono.shape[0]
        return mono

    def _check(self, mono: np.ndarray) -> None:
        # finite samples near float32's limit overflow when averaged or resampled
        if not np.isfinite(mono).all():
            raise AudioError(f"{self.name}: samples so loud that mixing or resampling them "
                             "overflows float32")

    def finish(self) -> np.ndarray:
        """The resampler's last samples: float32 [m]; AudioError when the clip gave none."""
        tail = np.zeros(0, dtype=np.float32)
        if self.stream is not None:
            tail = self.stream.resample_chunk(tail, last=True)
        self._check(tail)
        if self.out + tail.shape[0] == 0:
            raise AudioError(f"{self.name}: {self.frames} samples at {self.rate} Hz are too "
                             f"short to give one sample at {SAMPLE_RATE} Hz")
        return tail


@contextlib.contextmanager
def _open_file(
    source: str | os.PathLike | bytes | bytearray | memoryview | BinaryIO, name: str
) -> Iterator[BinaryIO]:
    """A seekable binary file positioned at the start of the audio; AudioError when there is
    none (missing, a directory or device, an unusable name, empty, a text-mode object)."""
    if isinstance(source, (str, os.PathLike)):
        try:
            path = Path(source)
            if path.is_dir():
                raise AudioError(f"{name}: is a directory, not an audio file")
            if path.exists() and not path.is_file():  # a device or pipe could be endless
                raise AudioError(f"{name}: not a regular file")
            file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below
        except AudioError:
            raise
        except FileNotFoundError:
            raise AudioError(f"{name}: no such file") from None
        except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise AudioError(f"{name}: cannot read ({reason})") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        file = io.BytesIO(source)
    elif callable(getattr(source, "read", None)):
        if not isinstance(source.read(0), bytes):
            raise AudioError(f"{name}: file object must be opened in binary mode")
        seekable = getattr(source, "seekable", lambda: False)
        # soundfile seeks from the object's start: read the rest of one that is elsewhere
        file = source if seekable() and source.tell() == 0 else io.BytesIO(source.read())
    else:
        raise AudioError(f"{name}: not an audio source ({type(source).__name__}); give a "
                         f"path, bytes, a binary file object or an array")
    try:
        if file.seek(0, io.SEEK_END) == 0:
            raise AudioError(f"{name}: empty file (0 bytes)")
        file.seek(0)
        yield file
    finally:
        if file is not source:
            file.close()


def _reason(error: Exception) -> str:
    """libsndfile's own words for a decoding failure."""
    return (getattr(error, "error_string", None) or str(error)).strip().rstrip(".")


def _read_block(sound: sf.SoundFile, frames: int, name: str) -> np.ndarray:
    """The next float32 [<= frames, C] of ``sound``; AudioError when the data is corrupt."""
    try:
        return sound.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(f"{name}: corrupt or truncated audio data ({_reason(e)})") from None


def _sound_blocks(sound: sf.SoundFile, name: str, max_seconds: Seconds | None
                  ) -> Iterator[np.ndarray]:
    """16 kHz mono float32 blocks of an open file, checked block by block (`stream_audio`)."""
    rate, channels = sound.samplerate, sound.channels
    _check_rate(rate, name)
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{name}: absurd channel count {channels} (allowed 1..{MAX_CHANNELS})")
    known = 0 <= sound.frames < _UNKNOWN_FRAMES  # libsndfile's "unknown length" is 2**63 - 1
    if known:
        _check_duration(sound.frames, rate, max_seconds, name, declared=True)
    mono = _Mono16k(rate, name)
    block = max(1, _READ_BLOCK // channels)
    while (chunk := _read_block(sound, block, name)).shape[0]:
        _check_duration(mono.frames + chunk.shape[0], rate, max_seconds, name)
        _check_finite(chunk, name)
        out = mono.push(chunk)
        if out.shape[0]:
            yield out
    if mono.frames == 0:
        raise AudioError(f"{name}: no audio samples")
    if known and mono.frames < sound.frames:
        raise AudioError(f"{name}: truncated: the header declares {sound.frames} frames, "
                         f"the data holds {mono.frames}")
    tail = mono.finish()
    if tail.shape[0]:
        yield tail


def _check_riff_length(file: BinaryIO, name: str) -> None:
    """Refuse a RIFF/WAVE file whose 'data' chunk declares more bytes than the file holds.

    libsndfile silently clamps such a chunk to the bytes present, which hides a truncated
    download or a header claiming hours of audio. The sizes 0 and 0xFFFFFFFF mean "unknown
    length" (streamed WAV, RF64) and are accepted. Reads only the chunk headers; leaves
    ``file`` at its start.
    """
    head = file.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        file.seek(0)
        return
    total = file.seek(0, io.SEEK_END)
    pos = 12
    while pos + 8 <= total:
        file.seek(pos)
        chunk_head = file.read(8)
        chunk_id, size = chunk_head[:4], struct.unpack_from("<I", chunk_head, 4)[0]
        if chunk_id == b"data":
            held = total - pos - 8
            if size not in (0, 0xFFFFFFFF) and size > held:
                raise AudioError(f"{name}: truncated WAV: the header declares {size} bytes of "
                                 f"audio, the file holds {held}")
            break
        pos += 8 + size + (size & 1)
    file.seek(0)


def _decode_ffmpeg(file: BinaryIO, name: str, max_seconds: Seconds | None, why: str
                   ) -> np.ndarray:
    """Decode with the ffmpeg CLI to float32 [N] at 16 kHz (s16le / 32768).

    With ``max_seconds`` ffmpeg stops one sample past the limit (``-t``), so its output is
    bounded; a file on disk is its stdin directly, other sources are piped from memory.
    """
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0"]
    if max_seconds is not None:  # one sample past the limit is enough to refuse the file
        cmd += ["-t", f"{max_seconds + 2 / SAMPLE_RATE:.6f}"]
    cmd += ["-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1"]
    try:
        stdin: dict = {"stdin": file} if file.fileno() >= 0 else {}
    except (OSError, AttributeError, io.UnsupportedOperation):
        stdin = {"input": file.read()}
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=_FFMPEG_TIMEOUT, check=False,
                              **stdin)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AudioError(f"{name}: not decodable by soundfile ({why}) and ffmpeg failed ({e})"
                         ) from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"{name}: not a decodable audio file (soundfile: {why}; ffmpeg: "
                         f"{err[-1] if err else 'exit code ' + str(proc.returncode)})")
    pcm = np.frombuffer(proc.stdout[: len(proc.stdout) // 2 * 2], dtype="<i2")
    _check_duration(pcm.shape[0], SAMPLE_RATE, max_seconds, name)
    if pcm.shape[0] == 0:
        raise AudioError(f"{name}: no audio samples")
    return pcm.astype(np.float32) / 32768.0
