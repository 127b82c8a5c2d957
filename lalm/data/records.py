"""What every manifest format's reader and writer share: records, audio paths, leniency.

A reader turns each record into an `Example` or, when it cannot, a `BadRecord` with the reason
(`read_leniently`), so `lalm data check` lists every bad record, not just the first.
A record of another format names the key it lacks and the format its keys say it is in
(`require_keys`, `record_format`). Audio paths: readers make them absolute (`absolute_path`:
relative to the manifest's folder), writers store them relative to the destination's folder
when the audio lies under it (`portable_path`). `check_holds` refuses what a format cannot
hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lalm.data.manifest import Example
from lalm.errors import DataError
from lalm.files import atomic_write

INSTRUCT_TASK = "instruct"  # task name of single-turn items from formats without task names
CHAT_TASK = "chat"  # task name of the other items of the messages and sharegpt formats


@dataclass(frozen=True)
class BadRecord:
    """A record that could not become an `Example`.

    Attributes:
        location: where it is (``file:line`` or ``file[row]``).
        reason: what is wrong, in words.
    """

    location: str
    reason: str


def absolute_path(path: str, folder: Path) -> str:
    """`path` made absolute: a relative path is relative to `folder`."""
    p = Path(path)
    return str(p if p.is_absolute() else (folder / p).resolve())


def portable_path(path: str, folder: Path) -> str:
    """`path` relative to `folder` (POSIX separators) when it lies under it, else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(p)


def resolve_audio_paths(example: Example, folder: str | os.PathLike[str]) -> Example:
    """The example with every relative audio path made absolute against `folder`."""
    folder = Path(folder)
    audios = tuple(replace(a, path=absolute_path(a.path, folder)) for a in example.audios)
    return replace(example, audios=audios)


def relative_audio_paths(example: Example, folder: str | os.PathLike[str]) -> Example:
    """The example with audio paths relative to `folder` where they lie under it."""
    folder = Path(folder)
    audios = tuple(replace(a, path=portable_path(a.path, folder)) for a in example.audios)
    return replace(example, audios=audios)


def check_holds(example: Example, fmt: str, *, several: bool, window: bool, turns: bool) -> None:
    """Raise DataError when `example` uses what format `fmt` cannot hold."""
    if not several and len(example.audios) != 1:
        raise DataError(f"example {example.id!r}: format {fmt!r} holds exactly one audio per "
                        f"item, this one has {len(example.audios)}")
    if not window and any(a.offset or a.duration is not None for a in example.audios):
        raise DataError(f"example {example.id!r}: format {fmt!r} cannot hold an audio window "
                        f"(offset/duration); cut the audio into files first")
    if not turns and example.messages:
        raise DataError(f"example {example.id!r}: format {fmt!r} cannot hold chat turns")


def json_records(path: Path) -> Iterator[tuple[str, Any | BadRecord]]:
    """(location, parsed JSON or BadRecord) per non-blank line; a JSON array file: per item."""
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not a JSON array: {e}") from e
        for i, item in enumerate(items):
            yield f"{path}[{i}]", item
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{n}", BadRecord(f"{path}:{n}", f"not JSON: {e}")


def read_leniently(path: Path, to_example: Callable[[dict[str, Any], str, int], Example]
                   ) -> Iterator[Example | BadRecord]:
    """Parse a JSON-lines (or JSON array) file record by record; a record `to_example` (record,
    default id, record number) cannot turn into an example becomes a `BadRecord`."""
    for n, (loc, record) in enumerate(json_records(path), 1):
        if isinstance(record, BadRecord):
            yield record
            continue
        try:
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type(record).__name__}")
            yield to_example(record, f"{path.stem}-{n:06d}", n)
        except KeyError as e:
            yield BadRecord(loc, f"missing key {e.args[0]!r}")
        except (DataError, TypeError, ValueError, AttributeError) as e:
            reason = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            yield BadRecord(loc, reason)


def record_format(record: dict[str, Any]) -> str | None:
    """The format one record's keys say it is in, or None."""
    if "task" in record and "id" in record:
        return "lalm"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "audio" in record and "target" in record:
        return "plain"
    if "recording" in record or record.get("type") == "MonoCut":
        return "lhotse"
    return None


def require_keys(record: dict[str, Any], keys: Sequence[str], fmt: str) -> None:
    """Raise DataError naming the first of `keys` that `record` (a row of format `fmt`) lacks,
    the keys it has, and the format it looks like."""
    missing = [k for k in keys if k not in record]
    if missing:
        seen = record_format(record)
        hint = (f"; it looks like a {seen!r} row: name that format, or none to guess"
                if seen not in (None, fmt) else "")
        raise DataError(f"no {missing[0]!r} key, which a {fmt!r} row needs; the row has "
                        f"{sorted(record)}{hint}")


def write_json_lines(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line, atomically; the number written."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    atomic_write(path, "".join(lines).encode("utf-8"))
    return len(lines)
