"""Procedural music for lalm-synth: notes in several timbres, chords, tempo patterns.

Pitch is equal temperament, A4 = MIDI 69 = 440 Hz. Oscillators are band-limited (additive
harmonics below Nyquist) so that a note's pitch is its only spectral claim. Signals are float32
[N] at 16 kHz, peak-normalised; the arguments are the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lalm.synth.mixing import SAMPLE_RATE, fade, n_samples, normalize, overlay

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

#: Chord qualities: label -> semitone intervals above the root.
CHORDS: dict[str, tuple[int, ...]] = {
    "major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6), "augmented": (0, 4, 8),
    "suspended fourth": (0, 5, 7), "dominant seventh": (0, 4, 7, 10),
    "major seventh": (0, 4, 7, 11),
}


def midi_to_hz(midi: int | float) -> float:
    """Frequency of a MIDI note number (69 -> 440.0 Hz)."""
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def note_name(midi: int) -> str:
    """Scientific pitch name of a MIDI number (60 -> "C4")."""
    return f"{NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


def _t(duration: float) -> np.ndarray:
    return np.arange(n_samples(duration), dtype=np.float64) / SAMPLE_RATE


def _additive(freq: float, duration: float, amplitude: Callable[[int], float]) -> np.ndarray:
    t = _t(duration)
    top = int((SAMPLE_RATE / 2 - 200) // freq)
    return sum(amplitude(h) * np.sin(2 * np.pi * freq * h * t) for h in range(1, top + 1))


def _envelope(duration: float, attack: float, release: float) -> np.ndarray:
    t = _t(duration)
    return np.minimum(1.0, t / attack) * np.minimum(1.0, (duration - t) / release).clip(0)


def _sine(freq: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    return np.sin(2 * np.pi * freq * _t(duration)) * _envelope(duration, 0.01, 0.05)


def _square(freq: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    wave = _additive(freq, duration, lambda h: (h % 2) / h)
    return wave * _envelope(duration, 0.01, 0.05)


def _sawtooth(freq: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    return _additive(freq, duration, lambda h: 1 / h) * _envelope(duration, 0.01, 0.05)


def _plucked(freq: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong string: a noise burst in a delay line with an averaging low-pass.
    The fractional part of the period is handled by a first-order all-pass tuning filter."""
    period = SAMPLE_RATE / freq - 0.5  # the two-tap average adds half a sample of delay
    delay = int(period)
    frac = period - delay
    coef = (1 - frac) / (1 + frac)
    n = n_samples(duration)
    out = np.zeros(n)
    out[: delay + 1] = rng.uniform(-1, 1, delay + 1)
    prev_in = prev_out = 0.0
    for i in range(delay + 1, n):
        x = 0.996 * 0.5 * (out[i - delay] + out[i - delay - 1])
        y = coef * x + prev_in - coef * prev_out  # all-pass for the fractional delay
        prev_in, prev_out = x, y
        out[i] = y
    return out * _envelope(duration, 0.001, 0.05)


def _bell(freq: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Two-operator FM with a non-integer ratio: inharmonic partials, decaying index."""
    t = _t(duration)
    decay = np.exp(-t / (0.35 * duration))
    index = 3.0 * decay
    return np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * 1.4 * freq * t)) * decay


def _organ(freq: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    weights = {1: 1.0, 2: 0.5, 3: 0.3, 4: 0.25, 6: 0.15, 8: 0.1}
    top = (SAMPLE_RATE / 2 - 200) / freq
    t = _t(duration)
    wave = sum(w * np.sin(2 * np.pi * freq * h * t) for h, w in weights.items() if h <= top)
    return wave * _envelope(duration, 0.03, 0.08)


#: Instruments (timbres): label -> oscillator (freq_hz, duration_s, rng) -> audio [N].
INSTRUMENTS: dict[str, Callable[[float, float, np.random.Generator], np.ndarray]] = {
    "sine wave": _sine, "square wave": _square, "sawtooth wave": _sawtooth,
    "plucked string": _plucked, "bell": _bell, "organ": _organ,
}


def note(midi: int, instrument: str, duration: float, rng: np.random.Generator) -> np.ndarray:
    """One note: float32 [n_samples(duration)], peak 0.9."""
    return fade(normalize(INSTRUMENTS[instrument](midi_to_hz(midi), duration, rng)))


def chord(root: int, quality: str, instrument: str, duration: float,
          rng: np.random.Generator) -> np.ndarray:
    """The notes of a chord sounded together: float32 [n_samples(duration)], peak 0.9."""
    voices = [INSTRUMENTS[instrument](midi_to_hz(root + i), duration, rng)
              for i in CHORDS[quality]]
    return fade(normalize(sum(voices)))


def beat_pattern(bpm: int, beats: int, instrument: str, rng: np.random.Generator) -> np.ndarray:
    """A metronome-like pattern: `beats` short notes, one per beat at `bpm`, accent on each
    bar's first beat (4/4). float32 [N], peak 0.9."""
    step = n_samples(60.0 / bpm)
    accent = note(84, instrument, 0.08, rng)
    plain = 0.6 * note(79, instrument, 0.08, rng)
    out = np.zeros(step * beats, np.float32)
    for k in range(beats):
        out = overlay(out, accent if k % 4 == 0 else plain, k * step)
    return normalize(out)
