"""Speech data in the layouts people download: corpus folders and Hugging Face `datasets`.

Every ASR task (``librispeech``, ``aishell1``, ``cv15_*``, ``fleurs_zh``...) and ``covost2``
reads, besides the QwenLM evaluation JSONL, whichever of these ``--data`` is (`read_asr`,
`read_st`); the task only fixes the language and the scorer:

=====================  ===================================================================
layout                 what lalm reads
=====================  ===================================================================
LibriSpeech            ``<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` (lines
                       ``<utt-id> <TEXT>``) beside ``<utt-id>.flac``; ``--data`` is the
                       split folder (``test-clean``) or any folder above the speakers;
                       source ``librispeech_<split>`` (``librispeech_test_clean``)
AISHELL-1              ``transcript/aishell_transcript_v0.8.txt`` (``<utt-id> <words>``) and
                       ``wav/<split>/<speaker>/<utt-id>.wav``; ``--data`` is ``data_aishell``
                       (its ``wav/test`` is read) or a ``wav/<split>`` folder; clips without
                       a transcript line are skipped and listed; source ``aishell1_<split>``
Common Voice           ``<locale>/test.tsv`` (header with ``path`` and ``sentence``) and
                       ``<locale>/clips/``; ``--data`` is the locale folder or the TSV;
                       source ``common_voice_<locale>_<tsv stem>``
FLEURS                 ``<lang>/test.tsv`` (no header: id, file name, raw transcription,
                       transcription, ..., samples, gender) and ``<lang>/audio/test/``; the
                       reference is the raw transcription; source ``fleurs_<lang>_<split>``
CoVoST 2               ``covost_v2.<src>_<tgt>.<split>.tsv`` (header ``path sentence
                       translation client_id``) with the Common Voice ``clips/`` of the source
                       language beside it; source ``covost2_<src>_<tgt>_<split>``
HF ``datasets``        a ``Dataset.save_to_disk`` folder, or parquet files, with one audio
                       column (embedded bytes or paths); the text column is the first of
                       `TEXT_COLUMNS` present; a ``DatasetDict`` is read at its ``test`` split
=====================  ===================================================================

Audio embedded in a HF dataset is written once into lalm's cache (``$LALM_CACHE/eval-audio``,
named by its SHA-256) so prediction records name real files.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lalm.errors import DataError
from lalm.eval.task import EvalData, EvalItem, find_data_file, read_official_jsonl

TEXT_COLUMNS = ("text", "sentence", "raw_transcription", "transcription", "normalized_text",
                "transcript")
_COVOST_NAME = re.compile(r"covost_v2\.([a-z-]+)_([a-z-]+)\.(\w+)\.tsv$", re.IGNORECASE)


# ---------------------------------------------------------------------------- HF datasets

def is_hf_dataset(data: Path) -> bool:
    """A ``save_to_disk`` folder, a parquet file, or a folder of parquet files."""
    if data.is_file():
        return data.suffix == ".parquet"
    return ((data / "state.json").is_file() or (data / "dataset_dict.json").is_file()
            or any(data.glob("*.parquet")))


def _materialize(audio: Any, root: Path, where: str) -> str:
    """A file path for one audio cell (``{"bytes", "path"}``), writing embedded bytes once."""
    from lalm.assets import cache_dir
    from lalm.files import atomic_write

    if not isinstance(audio, dict):
        raise DataError(f"{where}: the audio cell is {type(audio).__name__}, not an Audio "
                        f"value (bytes/path)")
    data, path = audio.get("bytes"), audio.get("path")
    if data:
        suffix = Path(path).suffix if path else ".wav"
        target = cache_dir() / "eval-audio" / (hashlib.sha256(data).hexdigest()[:32] + suffix)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, data)
        return str(target)
    if path:
        p = Path(path)
        return str(p if p.is_absolute() else (root / p).resolve())
    raise DataError(f"{where}: audio cell has neither bytes nor a path")


def _load_rows(data: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and audio column names of a ``save_to_disk`` folder (via `datasets`) or parquet
    files (via pyarrow: an audio column is a struct of ``bytes`` and ``path``)."""
    if data.is_dir() and not any(data.glob("*.parquet")):
        import datasets

        ds = datasets.load_from_disk(str(data))
        if isinstance(ds, datasets.DatasetDict):
            if "test" not in ds:
                raise DataError(f"{data}: a DatasetDict without a 'test' split ({list(ds)})")
            ds = ds["test"]
        audio = [k for k, f in ds.features.items() if isinstance(f, datasets.Audio)]
        for name in audio:
            ds = ds.cast_column(name, datasets.Audio(decode=False))
        return ds.to_list(), audio
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [data] if data.is_file() else sorted(data.glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    audio = [f.name for f in table.schema if pa.types.is_struct(f.type)
             and {"bytes", "path"} <= {c.name for c in f.type}]
    return table.to_pylist(), audio


def read_hf_rows(data: Path) -> tuple[list[dict[str, Any]], str]:
    """Rows of a HF dataset, the audio column replaced by a file path.

    Returns:
        ``(rows, audio column name)``.

    Raises:
        DataError: not loadable, a ``DatasetDict`` without ``test``, or not exactly one audio
            column (the message lists the columns).
    """
    try:
        rows, audio = _load_rows(data)
    except (OSError, ValueError) as e:
        raise DataError(f"{data}: not a Hugging Face dataset ({e})") from e
    if len(audio) != 1:
        raise DataError(f"{data}: need exactly one audio column, found {audio or 'none'} in "
                        f"{list(rows[0]) if rows else 'no rows'}")
    root = data if data.is_dir() else data.parent
    for n, row in enumerate(rows):
        row[audio[0]] = _materialize(row[audio[0]], root, f"{data}, row {n}")
    return rows, audio[0]


def _hf_asr(data: Path, source: str) -> EvalData:
    rows, audio = read_hf_rows(data)
    text = next((c for c in TEXT_COLUMNS if c in rows[0]), None) if rows else None
    if text is None:
        raise DataError(f"{data}: no transcript column (looked for {', '.join(TEXT_COLUMNS)}; "
                        f"found {list(rows[0]) if rows else 'no rows'})")
    items = [EvalItem(str(row.get("id", n)), (row[audio],), str(row[text]), source,
                      {k: v for k, v in row.items() if k not in (audio, text)
                       and isinstance(v, (str, int, float, bool, type(None)))})
             for n, row in enumerate(rows)]
    return EvalData(items)


# ---------------------------------------------------------------------------- corpus folders

def _librispeech(data: Path) -> EvalData:
    items, missing = [], []
    for trans in sorted(data.rglob("*.trans.txt")):
        rel = trans.relative_to(data).parts
        split = data.name if len(rel) <= 3 else rel[0]
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            audio = trans.parent / f"{utt}.flac"
            if not audio.exists():
                missing.append(str(audio))
                continue
            items.append(EvalItem(utt, (str(audio.resolve()),), text,
                                  "librispeech_" + split.replace("-", "_").lower()))
    if missing:
        raise DataError(f"{data}: {len(missing)} transcribed utterances have no audio, e.g. "
                        f"{missing[0]}")
    return EvalData(items)


def _aishell_transcript(data: Path) -> Path | None:
    """``transcript/aishell_transcript*.txt`` in ``data`` or up to three folders above."""
    for folder in [data, *data.parents][:4]:
        found = sorted(folder.glob("transcript/aishell_transcript*.txt"))
        if found:
            return found[0]
    return None


def _aishell(data: Path, transcript: Path) -> EvalData:
    wav_dir = data / "wav" / "test" if (data / "wav" / "test").is_dir() else data
    texts = dict(line.split(maxsplit=1) for line in
                 transcript.read_text(encoding="utf-8").splitlines() if len(line.split()) > 1)
    items, skipped = [], []
    for wav in sorted(wav_dir.rglob("*.wav")):
        if wav.stem not in texts:
            skipped.append(f"{wav}: no transcript line")
            continue
        items.append(EvalItem(wav.stem, (str(wav.resolve()),), texts[wav.stem],
                              f"aishell1_{wav_dir.name}"))
    return EvalData(items, skipped)


def _tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def _header_rows(path: Path, need: Sequence[str]) -> list[dict[str, str]]:
    rows = _tsv(path)
    if not rows or not set(need) <= set(rows[0]):
        raise DataError(f"{path}: expected a header with {list(need)}")
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def _common_voice(tsv: Path) -> EvalData:
    clips = tsv.parent / "clips"
    items = [EvalItem(Path(r["path"]).stem, (str((clips / r["path"]).resolve()),), r["sentence"],
                      f"common_voice_{r.get('locale') or tsv.parent.name}_{tsv.stem}")
             for r in _header_rows(tsv, ("path", "sentence"))]
    return EvalData(items)


def _fleurs(tsv: Path) -> EvalData:
    audio = tsv.parent / "audio" / tsv.stem
    items = []
    for n, row in enumerate(_tsv(tsv), 1):
        if len(row) < 4:
            raise DataError(f"{tsv}:{n}: a FLEURS row has at least 4 columns (id, file, raw "
                            f"transcription, transcription)")
        items.append(EvalItem(Path(row[1]).stem, (str((audio / row[1]).resolve()),), row[2],
                              f"fleurs_{tsv.parent.name}_{tsv.stem}",
                              {"sentence_id": row[0], "transcription": row[3]}))
    return EvalData(items)


def _is_fleurs(tsv: Path) -> bool:
    rows = _tsv(tsv)
    return bool(rows) and "path" not in rows[0] and (tsv.parent / "audio").is_dir()


def _nonempty(data: EvalData, where: Path) -> EvalData:
    if not data.items:
        raise DataError(f"{where}: no utterances found")
    return data


def read_asr(data: Path, candidates: Sequence[str], source: str) -> EvalData:
    """An ASR task's items from the official JSONL or any layout of the module docstring.

    Args:
        data: ``--data``.
        candidates: the official JSONL's relative paths (tried first).
        source: the source name for layouts that carry none (HF datasets).

    Raises:
        DataError: no layout recognised (the message says what was looked for).
    """
    if data.is_file() and data.suffix == ".jsonl":
        return read_official_jsonl(data, candidates)
    if data.is_dir():
        try:
            find_data_file(data, candidates)
            return read_official_jsonl(data, candidates)
        except DataError:
            pass
    if is_hf_dataset(data):
        return _nonempty(_hf_asr(data, source), data)
    if data.is_file() and data.suffix == ".tsv":
        return _nonempty(_fleurs(data) if _is_fleurs(data) else _common_voice(data), data)
    if data.is_dir():
        if next(data.rglob("*.trans.txt"), None) is not None:
            return _nonempty(_librispeech(data), data)
        if (data / "test.tsv").is_file():
            tsv = data / "test.tsv"
            return _nonempty(_fleurs(tsv) if _is_fleurs(tsv) else _common_voice(tsv), data)
        transcript = _aishell_transcript(data)
        if transcript is not None:
            return _nonempty(_aishell(data, transcript), data)
    raise DataError(f"{data}: not an evaluation JSONL ({', '.join(candidates)}), a HF dataset, "
                    f"or a LibriSpeech / AISHELL / Common Voice / FLEURS folder")


def read_st(data: Path, candidates: Sequence[str]) -> EvalData:
    """CoVoST 2 items from the official JSONL or ``covost_v2.<src>_<tgt>.<split>.tsv`` files.

    Raises:
        DataError: neither found, or a TSV name that does not give the language pair.
    """
    tsvs = ([data] if data.is_file() and data.suffix == ".tsv"
            else sorted(data.glob("covost_v2.*.tsv")) if data.is_dir() else [])
    if not tsvs:
        return read_official_jsonl(data, candidates)
    items = []
    for tsv in tsvs:
        name = _COVOST_NAME.search(tsv.name)
        if name is None:
            raise DataError(f"{tsv}: not named covost_v2.<src>_<tgt>.<split>.tsv")
        src, tgt, split = name.groups()
        clips = next((c for c in (tsv.parent / "clips", tsv.parent / src / "clips")
                      if c.is_dir()), tsv.parent / "clips")
        for r in _header_rows(tsv, ("path", "sentence", "translation")):
            items.append(EvalItem(Path(r["path"]).stem, (str((clips / r["path"]).resolve()),),
                                  r["translation"], f"covost2_{src}_{tgt}_{split}",
                                  {"sentence": r["sentence"]}))
    return _nonempty(EvalData(items), data)
