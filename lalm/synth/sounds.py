"""Procedural sound events and acoustic-scene backgrounds for lalm-synth.

Every sound is a function of a numpy Generator: the parameters it draws are returned with the
audio and they ARE the ground truth (the class, the count, the order, the frequencies). Signals
are float32 [N] at 16 kHz, peak-normalised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lalm.synth.mixing import SAMPLE_RATE, concat, fade, n_samples, normalize, silence

Sound = tuple[np.ndarray, dict[str, Any]]


def _t(duration: float) -> np.ndarray:
    return np.arange(n_samples(duration), dtype=np.float64) / SAMPLE_RATE


def _tone(freqs: list[float], duration: float) -> np.ndarray:
    t = _t(duration)
    return sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)


def colored_noise(rng: np.random.Generator, duration: float, exponent: float) -> np.ndarray:
    """Noise with power spectrum ∝ 1/f^exponent (0 white, 1 pink, 2 brown); float32 [N]."""
    n = n_samples(duration)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1] if n > 1 else 1.0
    return normalize(np.fft.irfft(spectrum / f ** (exponent / 2), n))


def _lowpass(rng: np.random.Generator, duration: float, cutoff: float) -> np.ndarray:
    n = n_samples(duration)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    return normalize(np.fft.irfft(spectrum / (1 + (f / cutoff) ** 4), n))


# --- sound events: rng -> (audio, parameters) ---------------------------------------------

def siren(rng: np.random.Generator) -> Sound:
    lo, hi, rate = float(rng.uniform(500, 800)), float(rng.uniform(1100, 1600)), float(
        rng.uniform(0.3, 1.2))
    duration = float(rng.uniform(1.5, 3.0))
    t = _t(duration)
    freq = lo + (hi - lo) * (0.5 - 0.5 * np.cos(2 * np.pi * rate * t))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    return fade(normalize(np.sin(phase))), {"low_hz": lo, "high_hz": hi, "sweep_hz": rate}


def alarm(rng: np.random.Generator) -> Sound:
    freq, beeps = float(rng.uniform(2000, 3500)), int(rng.integers(3, 7))
    on, off = float(rng.uniform(0.08, 0.2)), float(rng.uniform(0.06, 0.15))
    beep = fade(np.sign(_tone([freq], on)) * 0.6, 3)
    return normalize(concat([np.concatenate([beep, silence(off)]) for _ in range(beeps)])), {
        "freq_hz": freq, "beeps": beeps}


DTMF = {"1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "4": (770, 1209),
        "5": (770, 1336), "6": (770, 1477), "7": (852, 1209), "8": (852, 1336),
        "9": (852, 1477), "*": (941, 1209), "0": (941, 1336), "#": (941, 1477)}


def dtmf(rng: np.random.Generator) -> Sound:
    digits = "".join(rng.choice(list("0123456789"), size=int(rng.integers(3, 7))))
    tones = [np.concatenate([fade(_tone(list(DTMF[d]), 0.12)), silence(0.08)]) for d in digits]
    return normalize(concat(tones)), {"digits": digits}


def dial_tone(rng: np.random.Generator) -> Sound:
    return fade(normalize(_tone([350.0, 440.0], float(rng.uniform(1.5, 3.0))))), {
        "freqs_hz": [350, 440]}


def _noise_event(exponent: float) -> Callable[[np.random.Generator], Sound]:
    def make(rng: np.random.Generator) -> Sound:
        return fade(colored_noise(rng, float(rng.uniform(1.5, 3.0)), exponent), 30), {
            "exponent": exponent}
    return make


def ticking(rng: np.random.Generator) -> Sound:
    period, ticks = float(rng.uniform(0.25, 0.6)), int(rng.integers(4, 9))
    click = rng.standard_normal(64) * np.exp(-np.arange(64) / 10)  # a 4 ms click
    period_n = n_samples(period)
    out = np.zeros(period_n * ticks)
    for k in range(ticks):
        out[k * period_n: k * period_n + click.size] += click
    return normalize(out), {"period_s": period, "ticks": ticks}


def chirp(rng: np.random.Generator) -> Sound:
    f0, f1, duration = float(rng.uniform(300, 900)), float(rng.uniform(2500, 5000)), float(
        rng.uniform(0.3, 0.8))
    t = _t(duration)
    k = np.log(f1 / f0) / duration
    phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    return fade(normalize(np.sin(phase))), {"start_hz": f0, "end_hz": f1}


def engine(rng: np.random.Generator) -> Sound:
    f0, duration = float(rng.uniform(28, 60)), float(rng.uniform(1.5, 3.0))
    t = _t(duration)
    wobble = 1 + 0.3 * np.sin(2 * np.pi * float(rng.uniform(2, 6)) * t)
    hum = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 12)) * wobble
    return fade(normalize(hum + 0.1 * _lowpass(rng, duration, 400)), 30), {"fundamental_hz": f0}


def impact(rng: np.random.Generator) -> Sound:
    decay = float(rng.uniform(0.03, 0.12))
    t = _t(0.4)
    burst = _lowpass(rng, 0.4, float(rng.uniform(800, 3000))) * np.exp(-t / decay)
    return normalize(burst), {"decay_s": decay}


def doorbell(rng: np.random.Generator) -> Sound:
    high = float(rng.uniform(600, 900))
    ratio = 2 ** (-4 / 12)  # a major third down: "ding-dong"
    t = _t(0.7)
    notes = [np.sin(2 * np.pi * f * t) * np.exp(-t / 0.25) for f in (high, high * ratio)]
    return normalize(np.concatenate(notes)), {"high_hz": high}


#: Event classes: label -> generator. Labels are the exact answers.
EVENTS: dict[str, Callable[[np.random.Generator], Sound]] = {
    "siren": siren, "alarm beeping": alarm, "telephone keypad tones": dtmf,
    "dial tone": dial_tone, "white noise": _noise_event(0.0), "pink noise": _noise_event(1.0),
    "brown noise": _noise_event(2.0), "clock ticking": ticking, "chirp": chirp,
    "engine humming": engine, "knock": impact, "doorbell": doorbell,
}
#: Short, countable events (used for counting and ordering questions).
COUNTABLE = ("knock", "doorbell", "chirp", "alarm beeping")


# --- acoustic scenes: rng, duration -> background -------------------------------------------

def _rain(rng: np.random.Generator, duration: float) -> np.ndarray:
    hiss = colored_noise(rng, duration, 0.3) * 0.5
    for start in rng.integers(0, max(n_samples(duration) - 200, 1), size=int(60 * duration)):
        hiss[start: start + 200] += rng.standard_normal(200) * np.exp(-np.arange(200) / 30) * 0.8
    return hiss


def _street(rng: np.random.Generator, duration: float) -> np.ndarray:
    rumble = colored_noise(rng, duration, 2.0)
    hum, _ = engine(rng)
    return rumble + 0.5 * np.resize(hum, rumble.size)


def _office(rng: np.random.Generator, duration: float) -> np.ndarray:
    room = colored_noise(rng, duration, 1.0) * 0.2
    for start in rng.integers(0, max(n_samples(duration) - 100, 1), size=int(6 * duration)):
        room[start: start + 100] += rng.standard_normal(100) * np.exp(-np.arange(100) / 12)
    return room


def _wind(rng: np.random.Generator, duration: float) -> np.ndarray:
    t = _t(duration)
    gust = 0.6 + 0.4 * np.sin(2 * np.pi * float(rng.uniform(0.1, 0.4)) * t + rng.uniform(0, 6))
    return _lowpass(rng, duration, float(rng.uniform(150, 400))) * gust


def _seaside(rng: np.random.Generator, duration: float) -> np.ndarray:
    t = _t(duration)
    swell = (0.5 - 0.5 * np.cos(2 * np.pi * float(rng.uniform(0.12, 0.25)) * t)) ** 2
    return colored_noise(rng, duration, 0.8) * (0.15 + swell)


#: Scene classes: label -> background generator (rng, duration) -> audio [N].
SCENES: dict[str, Callable[[np.random.Generator, float], np.ndarray]] = {
    "rain": _rain, "busy street": _street, "office": _office, "windy outdoors": _wind,
    "seaside": _seaside,
}


def scene(label: str, rng: np.random.Generator, duration: float) -> np.ndarray:
    """The background of scene `label`, float32 [n_samples(duration)], peak 0.9."""
    return fade(normalize(SCENES[label](rng, duration)), 50)


def event(label: str, rng: np.random.Generator) -> Sound:
    """One event of class `label`: (float32 [N] peak 0.9, drawn parameters)."""
    audio, params = EVENTS[label](rng)
    return normalize(audio.astype(np.float32)), params
