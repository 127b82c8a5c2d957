"""The lalm-synth generator: plan items, draw each from its own seed, write files atomically.

Output layout under ``out``::

    items/<id>.json                 one record per item (written last: the item's "done" mark)
    audio/<split>/<task>/<id>.wav   16 kHz mono 16-bit PCM (``<id>_<k>.wav`` for several clips)
    train.jsonl valid.jsonl test.jsonl    manifests (lalm's Example JSONL), in plan order
    airbench/Foundation_meta.json   AIR-Bench foundation layout (see `airbench.py`)
    airbench/<Task>_lalm-synth/<id>.wav

Every item draws from a Generator seeded by (seed, task, split, index) alone, so items are
independent: they run in any order, in parallel processes, and a rerun skips the items whose
record exists (resume) and reproduces the others bit for bit. Same seed => same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from lalm.data.manifest import SPLITS, AudioRef, Example, write_manifest
from lalm.errors import DataError
from lalm.files import atomic_write
from lalm.synth.airbench import export_airbench
from lalm.synth.mixing import wav_bytes
from lalm.synth.tasks import TASKS

#: Items per task in (train, valid, test).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (1, 1, 1), "small": (50, 5, 10), "medium": (400, 25, 50), "large": (4000, 100, 200),
}


@dataclass(frozen=True)
class Job:
    """One item to make: the `index`-th item of `task` in `split`."""

    task: str
    split: str
    index: int

    @property
    def id(self) -> str:
        """The item id, unique in a dataset (``asr-test-00003``)."""
        return f"{self.task}-{self.split}-{self.index:05d}"


@dataclass(frozen=True)
class SynthReport:
    """What a `generate` call did: items made now, items already there, manifest sizes."""

    made: int
    skipped: int
    per_split: dict[str, int]
    airbench: int


def plan(size: str, tasks: list[str] | None = None) -> list[Job]:
    """The jobs of a dataset, in manifest order (split, task, index).

    Raises:
        DataError: an unknown size or task name.
    """
    if size not in SIZES:
        raise DataError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    names = list(TASKS) if tasks is None else tasks
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise DataError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    return [Job(t, split, i) for split, n in zip(SPLITS, SIZES[size]) for t in names
            for i in range(n)]


def job_rng(seed: int, job: Job) -> np.random.Generator:
    """The Generator of one item: a function of (seed, task, split, index) only."""
    key = hashlib.sha256(f"lalm-synth/{seed}/{job.task}/{job.split}/{job.index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:16], "big"))


def _record_path(out: Path, job: Job) -> Path:
    return out / "items" / f"{job.id}.json"


def make_item(out: Path, seed: int, job: Job) -> bool:
    """Make one item (audio files, then its record) unless its record exists.

    Returns:
        True when the item was made now, False when it was already there.
    """
    record = _record_path(out, job)
    if record.exists():
        return False
    item = TASKS[job.task][1](job_rng(seed, job), job.split)
    refs = []
    for k, audio in enumerate(item.audios):
        suffix = "" if len(item.audios) == 1 else f"_{k}"
        rel = Path("audio") / job.split / job.task / f"{job.id}{suffix}.wav"
        atomic_write(out / rel, wav_bytes(audio))
        refs.append(AudioRef(rel.as_posix()))
    example = Example(id=job.id, audios=tuple(refs), task=item.task, target=item.target,
                      answer=item.answer, words=item.words, messages=item.messages,
                      split=job.split, metadata={"category": TASKS[job.task][0], "seed": seed,
                                                 **item.metadata})
    atomic_write(record, json.dumps(example.to_dict(), ensure_ascii=False,
                                    sort_keys=True).encode("utf-8"))
    return True


def _make_item_args(args: tuple[Path, int, Job]) -> bool:
    return make_item(*args)


def generate(out: str | os.PathLike[str], size: str = "small", seed: int = 0,
             tasks: list[str] | None = None, workers: int | None = None) -> SynthReport:
    """Generate (or finish generating) a lalm-synth dataset in `out`.

    Args:
        out: output folder (created).
        size: a key of `SIZES`.
        seed: the dataset seed; the same seed gives byte-identical files.
        tasks: task names to include (default: all of `TASKS`).
        workers: processes; default os.cpu_count(); 1 runs in this process.

    Returns:
        A `SynthReport`.

    Raises:
        DataError: unknown size or task.
    """
    out = Path(out)
    jobs = plan(size, tasks)
    workers = workers or os.cpu_count() or 1
    args = [(out, seed, job) for job in jobs]
    if workers == 1:
        made = [make_item(*a) for a in args]
    else:  # fork: workers inherit the loaded modules; each loads its own TTS engines lazily
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            made = list(pool.map(_make_item_args, args, chunksize=1))
    per_split = {}
    for split in SPLITS:
        examples = [Example.from_dict(json.loads(_record_path(out, j).read_text("utf-8")))
                    for j in jobs if j.split == split]
        per_split[split] = write_manifest(out / f"{split}.jsonl", examples)
    n_airbench = export_airbench(out, out / "test.jsonl", out / "airbench")
    return SynthReport(sum(made), len(made) - sum(made), per_split, n_airbench)
