"""Data: lalm's example record, manifests and their JSONL form."""

from lalm.data.manifest import (
    LANGUAGES,
    SPLITS,
    AudioRef,
    Example,
    Message,
    TaskSpec,
    TimedWord,
    atomic_write,
    iter_manifest,
    read_manifest,
    write_manifest,
)

__all__ = [
    "LANGUAGES", "SPLITS", "AudioRef", "Example", "Message", "TaskSpec", "TimedWord",
    "atomic_write", "iter_manifest", "read_manifest", "write_manifest",
]
