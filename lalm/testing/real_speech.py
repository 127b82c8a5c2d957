"""Real recorded English speech with transcripts, from a Debian package (for tests and evals).

lalm-synth's speech is synthetic (Piper, eSpeak); these clips are people reading aloud, as
recorded. They come from Debian's ``pocketsphinx-testdata`` (16 kHz mono 16-bit WAV, with the
transcripts pocketsphinx tests against): five LibriVox readings of *Sense and Sensibility*
(an adult male reader, 3-7 s) and five spoken card names of the CMU "cards" set. The package
is fetched once with ``apt-get download`` (never installed) and unpacked with ``dpkg-deb`` into
``lalm.assets.cache_dir() / "real-speech"``.

`real_speech_clips()` -> [(path, transcript)], in `CLIPS` order.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lalm.assets import cache_dir
from lalm.errors import AssetError

#: The Debian package and the folder inside it that holds the test data.
PACKAGE = "pocketsphinx-testdata"
DATA = "usr/share/pocketsphinx/test/data"
#: The clips used, by (set, utterance id); each set's transcription file gives the words.
CLIPS: tuple[tuple[str, str], ...] = (
    *(("librivox", f"sense_and_sensibility_01_austen_64kb-{n:04d}")
      for n in (870, 880, 890, 920, 930)),
    *(("cards", f"{n:03d}") for n in range(1, 6)),
)
_TRANSCRIPTS = {"librivox": "librivox/transcription", "cards": "cards/cards.transcription"}
_LINE = re.compile(r"^<s>\s*(?P<text>.*?)\s*</s>\s*\((?P<id>[^)]+)\)\s*$")


def _unpacked() -> Path:
    """The package's data folder, fetched and unpacked on first use (atomically)."""
    target = cache_dir() / "real-speech" / PACKAGE
    if target.is_dir():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise AssetError(f"{PACKAGE}: needs apt-get and dpkg-deb (a Debian system)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True,
                              text=True)
        debs = sorted(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise AssetError(f"could not download {PACKAGE}: {proc.stderr.strip()[-300:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        try:
            (Path(tmp) / "x" / DATA).rename(target)
        except OSError:  # another process won the race; its copy is complete
            if not target.is_dir():
                raise
    return target


def real_speech_clips() -> list[tuple[Path, str]]:
    """Every clip of `CLIPS` with its transcript (lower case, as the package writes it).

    Raises:
        AssetError: the package cannot be fetched, or a clip or transcript is missing.
    """
    root = _unpacked()
    texts: dict[tuple[str, str], str] = {}
    for name, rel in _TRANSCRIPTS.items():
        for line in (root / rel).read_text(encoding="utf-8").splitlines():
            m = _LINE.match(line.strip())
            if m:
                texts[(name, m["id"])] = " ".join(m["text"].split())
    clips = []
    for name, utt in CLIPS:
        path = root / name / f"{utt}.wav"
        if (name, utt) not in texts or not path.is_file():
            raise AssetError(f"{PACKAGE}: clip {name}/{utt} or its transcript is missing")
        clips.append((path, texts[(name, utt)]))
    return clips
