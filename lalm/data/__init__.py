"""Data: lalm's example record, manifests and their JSONL form."""

from lalm.data.manifest import (
    LANGUAGES,
    SPLITS,
    AudioRef,
    Example,
    ExampleTask,
    ExampleTurn,
    TimedWord,
    iter_manifest,
    read_manifest,
    write_manifest,
)
from lalm.files import atomic_write

__all__ = [
    "LANGUAGES", "SPLITS", "AudioRef", "Example", "ExampleTurn", "ExampleTask", "TimedWord",
    "atomic_write", "iter_manifest", "read_manifest", "write_manifest",
]
