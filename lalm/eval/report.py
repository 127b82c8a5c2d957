"""What an evaluation report records so that it alone identifies and reproduces its numbers.

A run is keyed (``run.json``, `lalm.eval.evaluate.run_key`) by everything its predictions
depend on, so that a rerun resumes only predictions made by the same model on the same data
with the same options:

* the model's **weights hash**: SHA-256 over the loaded state dict as it is evaluated (every
  tensor's name, dtype, shape and bytes, in name order; `weights_sha256`). A content hash, not
  a hash of file names and times: a copied or re-saved checkpoint keeps its identity, a
  retrained one in the same folder does not, and an in-memory model (a Python `Pipeline` never
  saved) has one too. Its cost is one pass over the weights on up to 8 threads
  (docs/eval-reports.md gives measured rates); the CLI computes it once per run.
* the model config, the tokenizer (its BPE file's bytes and special tokens), family and dtype;
* the **data hash** (`data_sha256`): every item's id, reference, source and fields, with audio
  files replaced by the SHA-256 of their bytes and the data folder's path by ``$DATA``, so the
  same data moved elsewhere keeps its hash;
* the task and the decoding options. The prompt of each item is kept in its prediction record
  and checked on resume.

The report (``summary.json``, written by `lalm.eval.evaluate.evaluate`) adds the paths, item
counts, the prompt text per scoring group, the scorer procedures and package versions, lalm's
version and the wall time. Every JSON file is strict JSON (`dumps_strict`): a NaN or infinite
score becomes ``null`` and its path and reason are listed under ``null_scores``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from lalm import __version__
from lalm.eval.tasks import EvalItem
from lalm.files import atomic_write

REPORT_VERSION = "lalm-eval-report-v1"
#: Packages whose versions can change a score (the scorers' back ends); recorded when installed.
SCORER_PACKAGES = ("sacrebleu", "whisper-normalizer", "editdistance", "edit-distance", "zhconv",
                   "jiwer", "pycocoevalcap", "mecab-python3", "ipadic", "numpy")
_CHUNK = 1 << 24  # bytes hashed per update (16 MiB)


def _tensor_sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy()
    digest = hashlib.sha256()
    for start in range(0, data.size, _CHUNK):
        digest.update(memoryview(data[start:start + _CHUNK]))
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict: name, dtype, shape and bytes' SHA-256 of every tensor,
    in name order.

    Tensors are hashed on up to 8 threads (hashlib releases the GIL), each copied to the CPU
    only while it is hashed, so device weights are never all on the host at once.
    """
    state = model.state_dict()
    names = sorted(state)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda name: _tensor_sha256(state[name]), names))
    top = hashlib.sha256()
    for name, digest in zip(names, digests):
        tensor = state[name]
        top.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{digest}\n".encode())
    return top.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ModelInfo:
    """The evaluated model as the report records it.

    Attributes:
        name: as the user named it (``--model``), or None.
        path: the checkpoint folder (resolved), when ``name`` is one.
        weights_sha256: `weights_sha256` of the loaded weights.
        family: the prompt family (``qwen-audio`` / ``qwen2-audio``).
        dtype: parameter dtype, e.g. ``float32``.
        device: where it ran (not part of the run key: same weights, same predictions).
        config: the model config (`lalm.config.ModelConfig.to_dict`).
        tokenizer: the tokenizer's source file and SHA-256 (its bytes and special tokens).
    """

    name: str | None
    path: str | None
    weights_sha256: str
    family: str
    dtype: str
    device: str
    config: dict[str, Any]
    tokenizer: dict[str, str]

    def key(self) -> dict[str, Any]:
        """The fields predictions depend on (the model part of `RunKey`)."""
        return {"weights_sha256": self.weights_sha256, "family": self.family,
                "dtype": self.dtype, "tokenizer_sha256": self.tokenizer["sha256"],
                "config_sha256": hashlib.sha256(_canonical(self.config)).hexdigest()}

    @property
    def label(self) -> str:
        """A folder name for the model's runs: its name's last part and 8 digits of its hash."""
        stem = Path(self.name).name if self.name else "model"
        return f"{stem or 'model'}-{self.weights_sha256[:8]}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"name": self.name, "label": self.label, "path": self.path,
                "weights_sha256": self.weights_sha256,
                "family": self.family, "dtype": self.dtype, "device": self.device,
                "tokenizer": self.tokenizer, "config": self.config}


def describe_model(pipe: Any, name: str | None = None) -> ModelInfo:
    """The `ModelInfo` of a `lalm.generation.Pipeline` (hashes its weights once).

    Args:
        pipe: the pipeline (model, tokenizer, family).
        name: the model's name or checkpoint folder, as given.
    """
    parameter = next(pipe.model.parameters())
    tokenizer = pipe.tokenizer
    digest = hashlib.sha256(_canonical(sorted(tokenizer.special_tokens.items())))
    source = Path(tokenizer.source).resolve()
    if source.is_file():
        digest.update(file_sha256(source).encode())
    path = str(Path(name).resolve()) if name and Path(name).is_dir() else None
    return ModelInfo(name, path, weights_sha256(pipe.model), pipe.family.name,
                     str(parameter.dtype).removeprefix("torch."), str(parameter.device),
                     pipe.model.config.to_dict(),
                     {"source": str(source), "sha256": digest.hexdigest()})


def data_sha256(items: Sequence[EvalItem], data: Path) -> str:
    """SHA-256 of a data set's items (audio as content hashes, the data folder as ``$DATA``).

    Args:
        items: every item read (not only the evaluated ones).
        data: the ``--data`` path (a file's folder, or the folder itself, becomes ``$DATA``).
    """
    root = str((data if data.is_dir() else data.parent).resolve())
    audio: dict[str, str] = {}
    digest = hashlib.sha256()
    for item in items:
        for path in item.audios:
            if path not in audio:
                audio[path] = file_sha256(path) if Path(path).is_file() else f"missing:{path}"
        row = {"id": item.id, "reference": item.reference, "source": item.source,
               "fields": item.fields, "audio_sha256": [audio[p] for p in item.audios]}
        digest.update(_canonical(row).replace(root.encode(), b"$DATA") + b"\n")
    return digest.hexdigest()


def package_versions(names: Iterable[str] = SCORER_PACKAGES) -> dict[str, str]:
    """Installed versions of the named distributions (those not installed are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def scorer_procedures(scores: Any) -> list[str]:
    """Every procedure ``version`` named anywhere in a task's scores, sorted, once each."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, str) and (k == "version" or k.endswith("_version")):
                    found.add(v)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(scores)
    return sorted(found)


def environment() -> dict[str, str]:
    """lalm's, Python's and torch's versions (the generation side of reproducing a run)."""
    return {"lalm": __version__, "python": platform.python_version(), "torch": torch.__version__}


def strict_json(value: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """A copy of a JSON-ready value with NaN and infinities replaced by None.

    Returns:
        (the copy, {dotted path of each replaced number: why it has no value}).
    """
    nulls: dict[str, str] = {}

    def clean(v: Any, where: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            nulls[where] = ("NaN: undefined (nothing to average, e.g. no item was scored)"
                            if math.isnan(v) else f"{v}: unbounded (a division by zero)")
            return None
        if isinstance(v, dict):
            return {k: clean(x, f"{where}.{k}" if where else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x, f"{where}[{i}]") for i, x in enumerate(v)]
        return v

    return clean(value, path), nulls


def dumps_strict(value: dict[str, Any]) -> bytes:
    """A dict as strict JSON bytes (indented, UTF-8, newline-terminated): non-finite numbers
    become null and are listed, with their reason, under a top-level ``null_scores``."""
    cleaned, nulls = strict_json(value)
    if nulls:
        cleaned["null_scores"] = {**cleaned.get("null_scores", {}), **nulls}
    text = json.dumps(cleaned, indent=1, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def write_strict_json(path: str | Path, value: dict[str, Any]) -> None:
    """Write `dumps_strict` of a dict atomically."""
    atomic_write(path, dumps_strict(value))
