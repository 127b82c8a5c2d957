"""Signal helpers shared by lalm-synth's generators: WAV bytes, resampling, trimming, mixing.

All signals are float32 numpy arrays [N] at `SAMPLE_RATE` in [-1, 1]. Everything here is a pure
function of its inputs, so the same parameters always give the same bytes.
"""

from __future__ import annotations

import io
import wave

import numpy as np
import soxr

SAMPLE_RATE = 16000  # lalm's audio rate (lalm.audio.SAMPLE_RATE); every synth clip is 16 kHz


def seconds(n_samples: int) -> float:
    """Duration of `n_samples` at `SAMPLE_RATE`, in seconds."""
    return n_samples / SAMPLE_RATE


def n_samples(duration: float) -> int:
    """Number of samples in `duration` seconds at `SAMPLE_RATE` (rounded to nearest)."""
    return int(round(duration * SAMPLE_RATE))


def wav_bytes(audio: np.ndarray) -> bytes:
    """Encode float32 [N] audio as a 16 kHz mono 16-bit PCM WAV file (clipped to [-1, 1])."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    """Resample float32 [N] audio from `rate` Hz to `SAMPLE_RATE` (soxr, high quality)."""
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32)
    return soxr.resample(audio.astype(np.float32), rate, SAMPLE_RATE, quality="HQ")


def trim(audio: np.ndarray, threshold: float = 0.01, pad: int = 80) -> np.ndarray:
    """Cut leading and trailing near-silence (|x| < threshold × peak), keeping `pad` samples.

    The exact word spans of lalm-synth are the spans of trimmed clips, so this only decides
    where a word's clip starts, never whether a recorded time is right.
    """
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return audio[:0]
    loud = np.flatnonzero(np.abs(audio) >= threshold * peak)
    return audio[max(loud[0] - pad, 0): loud[-1] + 1 + pad]


def normalize(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale so that max |x| = `peak` (silence stays silence)."""
    m = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (peak / m)).astype(np.float32) if m > 0 else audio.astype(np.float32)


def fade(audio: np.ndarray, ms: float = 5.0) -> np.ndarray:
    """Apply raised-cosine fade-in/out of `ms` milliseconds (avoids clicks at clip edges)."""
    k = min(n_samples(ms / 1000.0), audio.size // 2)
    if k == 0:
        return audio.astype(np.float32)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k, dtype=np.float64))
    out = audio.astype(np.float64).copy()
    out[:k] *= ramp
    out[-k:] *= ramp[::-1]
    return out.astype(np.float32)


def silence(duration: float) -> np.ndarray:
    """Zeros [n_samples(duration)] float32."""
    return np.zeros(n_samples(duration), np.float32)


def concat(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate float32 clips ([N_i] -> [sum N_i])."""
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def rms(audio: np.ndarray) -> float:
    """Root mean square of a clip (0 for an empty clip)."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def overlay(base: np.ndarray, clip: np.ndarray, start: int, gain: float = 1.0) -> np.ndarray:
    """Add `clip` × gain into a copy of `base` from sample `start`, growing `base` if needed."""
    out = np.zeros(max(base.size, start + clip.size), np.float32)
    out[: base.size] = base
    out[start: start + clip.size] += gain * clip
    return out


def mix_at_snr(foreground: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix a background under a foreground at a signal-to-noise ratio (RMS over each clip).

    The background is tiled or cut to the foreground's length; the result is peak-normalised.

    Args:
        foreground: float32 [N].
        background: float32 [M], M > 0.
        snr_db: foreground RMS over background RMS, in dB.

    Returns:
        float32 [N].
    """
    reps = -(-foreground.size // background.size)
    bg = np.tile(background, reps)[: foreground.size]
    bg_rms = rms(bg)
    gain = rms(foreground) / (bg_rms * 10 ** (snr_db / 20)) if bg_rms > 0 else 0.0
    return normalize(foreground + gain * bg)
