"""Readers and writers for the manifests people already have, and conversion between them.

Formats (`FORMATS`), each mapped onto lalm's `Example`:

========== =========================================================================================
name       what it is
========== =========================================================================================
lalm       lalm's own JSONL (`lalm.data.manifest`): everything.
messages   ms-swift / LLaMA-Factory chat JSONL: ``{"messages": [{"role", "content"}, ...],
           "audios": [path, ...]}``; each ``<audio>`` in a content takes the next path and keeps
           its place in the text (``ExampleTurn.audio_at``): "Listen: <audio> and tell me" is heard
           between its two texts. A JSON array file (LLaMA-Factory's ``.json``) reads too, and a
           ``.json`` destination is written as one. Carries the audios, the turns and the target;
           one user turn that opens with its one audio + the assistant's answer becomes an
           instruction item (task ``instruct``, rendered as a v1 task prompt for Qwen-Audio),
           anything else a chat (task ``chat``).
sharegpt   LLaMA-Factory's ShareGPT layout (its data/README): ``{"conversations": [{"from",
           "value"}, ...], "system": text, "tools": text, "audios": [path, ...]}``, read and
           written as ``messages`` is. ``from``: ``human`` (or ``user``), ``gpt`` (or
           ``assistant``), ``system`` (first turn only; it overrides the ``system`` field, as in
           LLaMA-Factory). Tool turns (``function_call``, ``observation``), any other role and a
           non-empty ``tools`` are refused: lalm trains no tool calls. A system prompt is written
           as a first ``from: system`` turn (LLaMA-Factory's default tags read it).
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
hold: several clips (plain, hf, lhotse), audio windows (messages, sharegpt, plain, hf), chat
turns (plain, hf, lhotse), a text holding ``<audio>`` itself (messages, sharegpt). Reading is lenient per record: `iter_format` yields a `BadRecord` with the reason
for a record that cannot become an `Example` (a row of another format names the key it lacks and
the format it looks like; ``<audio>`` tags that are not as many as the audios), so `lalm data
check` can list them all. The chat formats live in `lalm.data.chat_rows`, what every reader
shares in `lalm.data.records`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lalm.data.chat_rows import read_messages, read_sharegpt, write_messages, write_sharegpt
from lalm.data.manifest import LANGUAGES, AudioRef, Example, ExampleTask, dumps_example
from lalm.data.records import (
    INSTRUCT_TASK,
    BadRecord,
    absolute_path,
    check_holds,
    json_records,
    portable_path,
    read_leniently,
    record_format,
    relative_audio_paths,
    require_keys,
    resolve_audio_paths,
    write_json_lines,
)
from lalm.errors import DataError
from lalm.files import atomic_write

LHOTSE_DEFAULT_TASK = "asr"


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


# ------------------------------------------------------------------------------------ lalm


def _read_lalm(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    def example(record: dict[str, Any], _id: str, _n: int) -> Example:
        require_keys(record, ("id", "task", "target"), "lalm")
        return resolve_audio_paths(Example.from_dict(record), path.parent)

    return read_leniently(path, example)


def _write_lalm(path: Path, examples: Sequence[Example]) -> int:
    lines = [dumps_example(relative_audio_paths(e, path.parent)) + "\n" for e in examples]
    atomic_write(path, "".join(lines).encode("utf-8"))
    return len(lines)


# ------------------------------------------------------------------------------------ plain


def _plain_example(record: dict[str, Any], default_id: str, folder: Path) -> Example:
    require_keys(record, ("audio", "target"), "plain")
    audio, prompt, target = record["audio"], record.get("prompt", ""), record["target"]
    if not all(isinstance(v, str) for v in (audio, prompt, target)):
        raise DataError("'audio', 'prompt' and 'target' must be strings")
    return Example(str(record.get("id", default_id)), (AudioRef(absolute_path(audio, folder)),),
                   ExampleTask(INSTRUCT_TASK, instruction=prompt), target)


def _read_plain(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    return read_leniently(path, lambda d, i, _n: _plain_example(d, i, path.parent))


def _write_plain(path: Path, examples: Sequence[Example]) -> int:
    def record(e: Example) -> dict[str, Any]:
        check_holds(e, "plain", several=False, window=False, turns=False)
        return {"id": e.id, "audio": portable_path(e.audios[0].path, path.parent),
                "prompt": e.task.instruction, "target": e.target}

    return write_json_lines(path, [record(e) for e in examples])


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
                source = absolute_path(audio["path"], folder)
            else:
                raise DataError("no audio bytes or path")
            yield Example(example_id, (AudioRef(source),),
                          ExampleTask(INSTRUCT_TASK, instruction=row.get("prompt") or ""),
                          row["target"])
        except (DataError, TypeError, ValueError) as e:
            yield BadRecord(loc, str(e))


def _write_hf(path: Path, examples: Sequence[Example]) -> int:
    datasets = _import("datasets", "data")
    for e in examples:
        check_holds(e, "hf", several=False, window=False, turns=False)
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
            ref = AudioRef(absolute_path(recording.sources[0].source, path.parent), cut.start,
                           None if full else cut.duration)
            language = next((s.language for s in cut.supervisions if s.language), None)
            language = language if language in LANGUAGES else None
            custom = cut.custom or {}
            task = ExampleTask(custom.get("task", LHOTSE_DEFAULT_TASK), language, language or "en",
                            instruction=custom.get("prompt", ""))
            target = " ".join(s.text for s in cut.supervisions if s.text)
            yield Example(cut.id, (ref,), task, target)
        except (DataError, TypeError, ValueError) as e:
            yield BadRecord(f"{path}[{cut.id}]", str(e))


def _write_lhotse(path: Path, examples: Sequence[Example]) -> int:
    lhotse = _import("lhotse", "data")
    cuts = []
    for e in examples:
        check_holds(e, "lhotse", several=False, window=True, turns=False)
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
        ManifestFormat("messages", read_messages, write_messages),
        ManifestFormat("sharegpt", read_sharegpt, write_sharegpt),
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
    for _, record in json_records(path):
        found = record_format(record) if isinstance(record, dict) else None
        if found is not None:
            return found
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
