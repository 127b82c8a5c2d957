"""Readers and writers for the manifests people already have, and conversion between them.

Formats (`FORMATS`), each mapped onto lalm's `Example`:

========== =========================================================================================
name       what it is
========== =========================================================================================
lalm       lalm's own JSONL (`lalm.data.manifest`): everything.
messages   ms-swift / LLaMA-Factory chat JSONL: ``{"messages": [{"role", "content"}, ...],
           "audios": [path, ...]}``; each ``<audio>`` in a content takes the next path. A JSON
           array file (LLaMA-Factory's ``.json``) reads too, and a ``.json`` destination is written
           as one. Carries the audios, the turns and the target; one user turn with one audio + the
           assistant's answer becomes an instruction item (task ``instruct``, rendered as a v1
           task prompt for Qwen-Audio), anything else a chat (task ``chat``).
plain      JSONL of ``{"audio": path, "prompt": text, "target": text}`` (+ optional ``"id"``).
hf         a Hugging Face ``datasets`` folder (``save_to_disk``) or ``.parquet`` file with columns
           ``id``, ``audio`` (an ``Audio`` feature), ``prompt``, ``target``. Written with the
           audio file bytes embedded; read back into files under an audio folder.
lhotse     a Lhotse CutSet file (``.jsonl`` / ``.jsonl.gz``): one MonoCut per item, its window is
           the audio window, supervision texts are the target, ``custom`` holds the prompt and the
           task name (default ``asr``). Needs the optional ``lhotse`` package.
========== =========================================================================================

Audio paths: readers return examples whose paths are absolute (a relative path in a file is
relative to that file's folder); writers store a path relative to the destination's folder when
the audio lies under it, absolute otherwise. Writers refuse (DataError) what a format cannot
hold: several clips (plain, hf, lhotse), audio windows (messages, plain, hf), chat turns (plain,
hf, lhotse). Reading is lenient per record: `iter_format` yields a `BadRecord` with the reason
for a record that cannot become an `Example`, so `lalm data check` can list them all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lalm.data.manifest import (
    LANGUAGES,
    AudioRef,
    Example,
    Message,
    TaskSpec,
    atomic_write,
    dumps_example,
)
from lalm.errors import DataError

#: The audio placeholder of ms-swift's and LLaMA-Factory's ``messages`` form (a foreign
#: format's text marker, not a model token).
MESSAGES_AUDIO_TAG = "<audio>"
INSTRUCT_TASK = "instruct"  # task name of single-turn items from formats without task names
CHAT_TASK = "chat"  # task name of multi-turn items from the messages format
LHOTSE_DEFAULT_TASK = "asr"


@dataclass(frozen=True)
class BadRecord:
    """A record that could not become an `Example`.

    Attributes:
        location: where it is (``file:line`` or ``file[row]``).
        reason: what is wrong, in words.
    """

    location: str
    reason: str


@dataclass(frozen=True)
class ManifestFormat:
    """One manifest format: a lenient reader and a writer.

    Attributes:
        name: the format name used by `convert` and the CLI.
        read: (path, audio_dir) -> examples with absolute audio paths, or `BadRecord`s.
        write: (path, examples) -> number written; raises DataError for what it cannot hold.
    """

    name: str
    read: Callable[[Path, Path | None], Iterator[Example | BadRecord]]
    write: Callable[[Path, Sequence[Example]], int]


# ------------------------------------------------------------------------------------ paths


def _absolute(path: str, folder: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (folder / p).resolve())


def _portable(path: str, folder: Path) -> str:
    """`path` relative to `folder` (POSIX separators) when it lies under it, else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(p)


def resolve_audio_paths(example: Example, folder: str | os.PathLike[str]) -> Example:
    """The example with every relative audio path made absolute against `folder`."""
    folder = Path(folder)
    audios = tuple(replace(a, path=_absolute(a.path, folder)) for a in example.audios)
    return replace(example, audios=audios)


def relative_audio_paths(example: Example, folder: str | os.PathLike[str]) -> Example:
    """The example with audio paths relative to `folder` where they lie under it."""
    folder = Path(folder)
    audios = tuple(replace(a, path=_portable(a.path, folder)) for a in example.audios)
    return replace(example, audios=audios)


def _need(example: Example, fmt: str, *, several: bool, window: bool, turns: bool) -> None:
    """Raise DataError when `example` uses what format `fmt` cannot hold."""
    if not several and len(example.audios) != 1:
        raise DataError(f"example {example.id!r}: format {fmt!r} holds exactly one audio per "
                        f"item, this one has {len(example.audios)}")
    if not window and any(a.offset or a.duration is not None for a in example.audios):
        raise DataError(f"example {example.id!r}: format {fmt!r} cannot hold an audio window "
                        f"(offset/duration); cut the audio into files first")
    if not turns and example.messages:
        raise DataError(f"example {example.id!r}: format {fmt!r} cannot hold chat turns")


def _json_lines(path: Path) -> Iterator[tuple[str, Any | BadRecord]]:
    """(location, parsed JSON or BadRecord) per non-blank line; a JSON array file gives its items."""
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


def _lenient(path: Path, to_example: Callable[[dict[str, Any], str, int], Example]
             ) -> Iterator[Example | BadRecord]:
    """Parse a JSON-lines file record by record; a bad record becomes a `BadRecord`."""
    for n, (loc, record) in enumerate(_json_lines(path), 1):
        if isinstance(record, BadRecord):
            yield record
            continue
        try:
            if not isinstance(record, dict):
                raise DataError(f"expected a JSON object, got {type(record).__name__}")
            yield to_example(record, f"{path.stem}-{n:06d}", n)
        except (DataError, KeyError, TypeError, ValueError, AttributeError) as e:
            reason = str(e) if isinstance(e, DataError) else f"{type(e).__name__}: {e}"
            yield BadRecord(loc, reason)


def _write_lines(path: Path, records: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    atomic_write(path, "".join(lines).encode("utf-8"))
    return len(lines)


# ------------------------------------------------------------------------------------ lalm


def _read_lalm(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    return _lenient(path, lambda d, _id, _n: resolve_audio_paths(Example.from_dict(d), path.parent))


def _write_lalm(path: Path, examples: Sequence[Example]) -> int:
    lines = [dumps_example(relative_audio_paths(e, path.parent)) + "\n" for e in examples]
    atomic_write(path, "".join(lines).encode("utf-8"))
    return len(lines)


# ------------------------------------------------------------------------------------ messages


def _messages_example(record: dict[str, Any], default_id: str, folder: Path) -> Example:
    turns = record["messages"]
    paths = record.get("audios", [])
    if not isinstance(turns, list) or not turns or not isinstance(paths, list):
        raise DataError("'messages' must be a non-empty list and 'audios' a list")
    messages, used = [], 0
    for turn in turns:
        content = turn["content"]
        if not isinstance(content, str):
            raise DataError(f"message content must be a string, got {type(content).__name__}")
        n = content.count(MESSAGES_AUDIO_TAG)
        messages.append(Message(turn["role"], content.replace(MESSAGES_AUDIO_TAG, ""),
                                tuple(range(used, used + n))))
        used += n
    if used != len(paths):
        raise DataError(f"{used} {MESSAGES_AUDIO_TAG} tags but {len(paths)} audios")
    if messages[-1].role != "assistant":
        raise DataError("the last message must be the assistant's answer")
    audios = tuple(AudioRef(_absolute(p, folder)) for p in paths)
    users = [m for m in messages if m.role == "user"]
    instruction = users[-1].text if users else ""
    example_id = str(record.get("id", default_id))
    if [m.role for m in messages] == ["user", "assistant"] and len(audios) == 1:
        return Example(example_id, audios, TaskSpec(INSTRUCT_TASK, instruction=instruction),
                       messages[-1].text)
    return Example(example_id, audios, TaskSpec(CHAT_TASK, instruction=instruction),
                   messages[-1].text, messages=tuple(messages))


def _read_messages(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    return _lenient(path, lambda d, i, _n: _messages_example(d, i, path.parent))


def _messages_record(example: Example, folder: Path) -> dict[str, Any]:
    _need(example, "messages", several=True, window=False, turns=True)
    turns = example.messages or (Message("user", example.task.instruction,
                                         tuple(range(len(example.audios)))),
                                 Message("assistant", example.target))
    audios = [_portable(example.audios[i].path, folder) for m in turns for i in m.audios]
    return {"id": example.id,
            "messages": [{"role": m.role, "content": MESSAGES_AUDIO_TAG * len(m.audios) + m.text}
                         for m in turns],
            "audios": audios}


def _write_messages(path: Path, examples: Sequence[Example]) -> int:
    records = [_messages_record(e, path.parent) for e in examples]
    if path.suffix == ".json":  # LLaMA-Factory reads a JSON array
        atomic_write(path, json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8"))
        return len(records)
    return _write_lines(path, records)


# ------------------------------------------------------------------------------------ plain


def _plain_example(record: dict[str, Any], default_id: str, folder: Path) -> Example:
    audio, prompt, target = record["audio"], record.get("prompt", ""), record["target"]
    if not all(isinstance(v, str) for v in (audio, prompt, target)):
        raise DataError("'audio', 'prompt' and 'target' must be strings")
    return Example(str(record.get("id", default_id)), (AudioRef(_absolute(audio, folder)),),
                   TaskSpec(INSTRUCT_TASK, instruction=prompt), target)


def _read_plain(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    return _lenient(path, lambda d, i, _n: _plain_example(d, i, path.parent))


def _write_plain(path: Path, examples: Sequence[Example]) -> int:
    def record(e: Example) -> dict[str, Any]:
        _need(e, "plain", several=False, window=False, turns=False)
        return {"id": e.id, "audio": _portable(e.audios[0].path, path.parent),
                "prompt": e.task.instruction, "target": e.target}

    return _write_lines(path, [record(e) for e in examples])


# ------------------------------------------------------------------------------------ hf


def _import(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DataError(f"this manifest format needs the optional package {module!r} "
                        f"(pip install 'lalm[{extra}]')") from e


def _load_hf(path: Path) -> Any:
    datasets = _import("datasets", "data")
    if not path.exists():
        raise DataError(f"dataset {path} does not exist")
    ds = (datasets.Dataset.from_parquet(str(path)) if path.suffix == ".parquet"
          else datasets.load_from_disk(str(path)))
    if "audio" in ds.column_names:  # raw {bytes, path}: lalm decodes the audio itself
        ds = ds.cast_column("audio", datasets.Audio(decode=False))
    return ds


def _read_hf(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    ds = _load_hf(path)
    missing = {"audio", "target"} - set(ds.column_names)
    if missing:
        raise DataError(f"dataset {path} lacks the column(s) {sorted(missing)}; it has "
                        f"{ds.column_names}")
    folder = path.parent
    for row_index, row in enumerate(ds):
        loc = f"{path}[{row_index}]"
        example_id = str(row.get("id") or f"{path.stem}-{row_index + 1:06d}")
        try:
            audio = row["audio"] or {}
            if audio.get("bytes"):
                if audio_dir is None:
                    raise DataError("the audio is embedded; an audio folder to extract it to "
                                    "is needed")
                suffix = Path(audio.get("path") or "x.wav").suffix or ".wav"
                target_file = audio_dir / f"{example_id}{suffix}"
                atomic_write(target_file, audio["bytes"])
                source = str(target_file.resolve())
            elif audio.get("path"):
                source = _absolute(audio["path"], folder)
            else:
                raise DataError("no audio bytes or path")
            yield Example(example_id, (AudioRef(source),),
                          TaskSpec(INSTRUCT_TASK, instruction=row.get("prompt") or ""),
                          row["target"])
        except (DataError, TypeError, ValueError) as e:
            yield BadRecord(loc, str(e))


def _write_hf(path: Path, examples: Sequence[Example]) -> int:
    datasets = _import("datasets", "data")
    for e in examples:
        _need(e, "hf", several=False, window=False, turns=False)
    audio = []
    for e in examples:
        source = Path(e.audios[0].path)
        try:
            audio.append({"bytes": source.read_bytes(), "path": source.name})
        except OSError as err:
            raise DataError(f"example {e.id!r}: cannot read audio {source}: "
                            f"{err.strerror or err}") from err
    string, binary = datasets.Value("string"), datasets.Value("binary")
    features = datasets.Features({"id": string, "audio": {"bytes": binary, "path": string},
                                  "prompt": string, "target": string})
    ds = datasets.Dataset.from_dict(
        {"id": [e.id for e in examples], "audio": audio,
         "prompt": [e.task.instruction for e in examples], "target": [e.target for e in examples]},
        features=features)
    # cast (not encode) to the Audio feature: readers see an audio column without a codec here
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=None, decode=True))
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    return len(examples)


# ------------------------------------------------------------------------------------ lhotse


def _read_lhotse(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    lhotse = _import("lhotse", "data")
    if not path.is_file():
        raise DataError(f"CutSet {path} does not exist")
    for cut in lhotse.CutSet.from_file(path):
        try:
            recording = cut.recording
            if recording is None or len(recording.sources) != 1 \
                    or recording.sources[0].type != "file":
                raise DataError("only cuts of a recording with one file source are supported")
            full = abs(cut.start) < 1e-9 and abs(cut.duration - recording.duration) < 1e-9
            ref = AudioRef(_absolute(recording.sources[0].source, path.parent), cut.start,
                           None if full else cut.duration)
            language = next((s.language for s in cut.supervisions if s.language), None)
            language = language if language in LANGUAGES else None
            custom = cut.custom or {}
            task = TaskSpec(custom.get("task", LHOTSE_DEFAULT_TASK), language, language or "en",
                            instruction=custom.get("prompt", ""))
            target = " ".join(s.text for s in cut.supervisions if s.text)
            yield Example(cut.id, (ref,), task, target)
        except (DataError, TypeError, ValueError) as e:
            yield BadRecord(f"{path}[{cut.id}]", str(e))


def _write_lhotse(path: Path, examples: Sequence[Example]) -> int:
    lhotse = _import("lhotse", "data")
    cuts = []
    for e in examples:
        _need(e, "lhotse", several=False, window=True, turns=False)
        ref = e.audios[0]
        try:
            recording = lhotse.Recording.from_file(Path(ref.path).resolve(), recording_id=e.id)
        except Exception as err:  # lhotse raises many kinds for unreadable files
            raise DataError(f"example {e.id!r}: cannot read audio {ref.path}: {err}") from err
        duration = ref.duration if ref.duration is not None else recording.duration - ref.offset
        supervision = lhotse.SupervisionSegment(e.id, recording.id, 0.0, duration, text=e.target,
                                                language=e.task.audio_language)
        cuts.append(lhotse.MonoCut(e.id, ref.offset, duration, 0, [supervision],
                                   recording=recording,
                                   custom={"task": e.task.name, "prompt": e.task.instruction}))
    path.parent.mkdir(parents=True, exist_ok=True)
    lhotse.CutSet.from_cuts(cuts).to_file(path)
    return len(cuts)


# ------------------------------------------------------------------------------------ registry

FORMATS: dict[str, ManifestFormat] = {
    f.name: f for f in (
        ManifestFormat("lalm", _read_lalm, _write_lalm),
        ManifestFormat("messages", _read_messages, _write_messages),
        ManifestFormat("plain", _read_plain, _write_plain),
        ManifestFormat("hf", _read_hf, _write_hf),
        ManifestFormat("lhotse", _read_lhotse, _write_lhotse),
    )
}


def guess_format(path: str | os.PathLike[str]) -> str:
    """The format of a manifest from its name and first record.

    Raises:
        DataError: the path is missing or its format cannot be told.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == ".parquet":
        return "hf"
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    if path.name.endswith(".gz"):
        return "lhotse"
    for _, record in _json_lines(path):
        if isinstance(record, dict):
            if "task" in record and "id" in record:
                return "lalm"
            if "messages" in record:
                return "messages"
            if "audio" in record and "target" in record:
                return "plain"
            if "recording" in record or record.get("type") == "MonoCut":
                return "lhotse"
        break
    raise DataError(f"cannot tell the format of {path}; name one of {', '.join(FORMATS)}")


def _format(name: str) -> ManifestFormat:
    if name not in FORMATS:
        raise DataError(f"unknown manifest format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


def iter_format(path: str | os.PathLike[str], fmt: str | None = None,
                audio_dir: str | os.PathLike[str] | None = None) -> Iterator[Example | BadRecord]:
    """Read a manifest leniently: an `Example` (absolute audio paths) or a `BadRecord` per record.

    Args:
        path: the manifest file (or dataset folder for ``hf``).
        fmt: a `FORMATS` name; None guesses it (`guess_format`).
        audio_dir: where embedded audio (``hf``) is extracted to.

    Raises:
        DataError: the manifest as a whole is missing or unreadable, or an unknown format.
    """
    path = Path(path)
    return _format(fmt or guess_format(path)).read(
        path, Path(audio_dir) if audio_dir is not None else None)


def read_examples(path: str | os.PathLike[str], fmt: str | None = None,
                  audio_dir: str | os.PathLike[str] | None = None) -> list[Example]:
    """Read a manifest strictly (see `iter_format`).

    Raises:
        DataError: the first bad record, named with its location and reason.
    """
    out = []
    for item in iter_format(path, fmt, audio_dir):
        if isinstance(item, BadRecord):
            raise DataError(f"{item.location}: {item.reason}")
        out.append(item)
    return out


def write_examples(path: str | os.PathLike[str], examples: Sequence[Example], fmt: str) -> int:
    """Write examples (audio paths absolute, or relative to the working folder) in `fmt`.

    Returns:
        The number written.

    Raises:
        DataError: unknown format, or an example the format cannot hold.
    """
    return _format(fmt).write(Path(path), list(examples))


def convert(src: str | os.PathLike[str], src_format: str | None, dst: str | os.PathLike[str],
            dst_format: str, audio_dir: str | os.PathLike[str] | None = None) -> int:
    """Convert a manifest between formats (`lalm data convert`).

    Args:
        src: source manifest.
        src_format: its format, or None to guess.
        dst: destination file (folder for ``hf`` without ``.parquet``).
        dst_format: destination format.
        audio_dir: where audio embedded in the source is extracted to; default
            ``<dst folder>/<dst stem>_audio``.

    Returns:
        The number of examples written.

    Raises:
        DataError: a bad source record (named), or an example the destination cannot hold.
    """
    dst = Path(dst)
    default_dir = dst.parent / f"{dst.name.split('.')[0]}_audio"
    extract = Path(audio_dir) if audio_dir is not None else default_dir
    examples = read_examples(src, src_format, extract)
    return write_examples(dst, examples, dst_format)
