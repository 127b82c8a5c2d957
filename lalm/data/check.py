"""`lalm data check`: validate a manifest and its audio before a long run.

Every record is parsed, every audio file is decoded (`lalm.audio.stream_audio`, the decoder
training uses; block by block, counted and never held), and each problem is listed with its
reason instead of stopping at the first: records that are not examples, missing, empty, corrupt
or truncated files, windows past the end of a file, clips shorter than one mel frame or longer
than the encoder's 30 s window (a whole-file clip is refused from its header, before decoding),
empty targets, repeated ids. The summary gives counts, durations and the native sample rates.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import soundfile as sf

from lalm.audio import CHUNK_LENGTH, HOP_LENGTH, SAMPLE_RATE, stream_audio
from lalm.data.formats import BadRecord, iter_format
from lalm.data.manifest import AudioRef, Example
from lalm.errors import AudioError, AudioTooLongError

Seconds = float
# (path, decoding limit) -> (16 kHz samples, native rate), or what is wrong with the file
Decoded = dict[tuple[str, Seconds | None], tuple[int, int] | str]


@dataclass(frozen=True)
class Problem:
    """One bad item: where it is (example id or record location) and why it is bad."""

    where: str
    reason: str


@dataclass
class CheckReport:
    """What `check_manifest` found.

    Attributes:
        records: records read (good and bad).
        good: examples without any problem.
        problems: every problem, in manifest order (an item may have several).
        durations: seconds of each decoded clip (windows: the window's length).
        sample_rates: native sample rate -> number of files (before resampling to 16 kHz).
    """

    records: int = 0
    good: int = 0
    problems: list[Problem] = field(default_factory=list)
    durations: list[Seconds] = field(default_factory=list)
    sample_rates: Counter[int] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """True when nothing was bad."""
        return not self.problems

    def summary(self) -> str:
        """A few lines for people: counts, durations, rates, then every problem."""
        bad = self.records - self.good
        head = f"{self.records} records: {self.good} good, {bad} with problems"
        lines = [f"{head} ({len(self.problems)} problems)"]
        if self.durations:
            d = sorted(self.durations)
            lines.append(f"audio: {len(d)} clips, {sum(d) / 3600:.3f} h; min {d[0]:.2f} s, "
                         f"median {d[len(d) // 2]:.2f} s, max {d[-1]:.2f} s")
        if self.sample_rates:
            rates = ", ".join(f"{r} Hz x{n}" for r, n in sorted(self.sample_rates.items()))
            lines.append(f"sample rates: {rates}")
        lines += [f"BAD {p.where}: {p.reason}" for p in self.problems]
        return "\n".join(lines)


def _clip_problem(ref: AudioRef, decoded: Decoded, report: CheckReport,
                  max_seconds: Seconds | None) -> str | None:
    """Decode one clip (once per file and limit) and return what is wrong with it, or None.

    The file is decoded block by block and only counted, so memory stays at one block. A clip
    that runs to the end of its file is decoded under ``offset + max_seconds`` (refused from
    the header, else one block past the limit); a window with a duration needs the file's full
    length, so its file is decoded to the end.
    """
    limit = None if ref.duration is not None or max_seconds is None else ref.offset + max_seconds
    key = (ref.path, limit)
    if key not in decoded:
        try:
            n_samples = sum(b.shape[0] for b in stream_audio(ref.path, max_seconds=limit))
            rate = _native_rate(ref.path)
            decoded[key] = (n_samples, rate)
        except AudioTooLongError as e:
            decoded[key] = f"{e}: longer than {max_seconds:g} s (the encoder's window); split it"
        except AudioError as e:
            decoded[key] = str(e)
    result = decoded[key]
    if isinstance(result, str):
        return result
    n_samples = result[0]
    file_seconds = n_samples / SAMPLE_RATE
    end = file_seconds if ref.duration is None else ref.offset + ref.duration
    if ref.offset >= file_seconds or end > file_seconds + 1.0 / SAMPLE_RATE:
        return (f"{ref.path}: window [{ref.offset:.3f}, {end:.3f}) s lies past the end of the "
                f"{file_seconds:.3f} s file")
    seconds = end - ref.offset
    report.durations.append(seconds)
    if seconds * SAMPLE_RATE < HOP_LENGTH:
        return f"{ref.path}: {seconds * 1000:.1f} ms is shorter than one 10 ms mel frame"
    if max_seconds is not None and seconds > max_seconds:
        return (f"{ref.path}: {seconds:.2f} s is longer than {max_seconds:g} s (the encoder's "
                f"window); split it")
    return None


def _native_rate(path: str) -> int:
    """The file's own sample rate; 16 kHz for files only ffmpeg decodes (it outputs 16 kHz)."""
    try:
        return sf.info(path).samplerate
    except (sf.LibsndfileError, RuntimeError, OSError):
        return SAMPLE_RATE


def check_manifest(path: str | os.PathLike[str], fmt: str | None = None,
                   audio_dir: str | os.PathLike[str] | None = None,
                   max_seconds: Seconds | None = CHUNK_LENGTH) -> CheckReport:
    """Check every record and every audio of a manifest; never stops at a bad item.

    Args:
        path: the manifest (any `lalm.data.formats.FORMATS` format).
        fmt: its format; None guesses it.
        audio_dir: where embedded audio (hf) is extracted to.
        max_seconds: clips longer than this are reported (None: no limit).

    Returns:
        The `CheckReport`.

    Raises:
        DataError: the manifest as a whole cannot be read (missing file, unknown format).
    """
    report = CheckReport()
    decoded: Decoded = {}
    seen: set[str] = set()
    for item in iter_format(path, fmt, audio_dir):
        report.records += 1
        if isinstance(item, BadRecord):
            report.problems.append(Problem(item.location, item.reason))
            continue
        problems = _example_problems(item, seen, decoded, report, max_seconds)
        report.problems += [Problem(item.id, p) for p in problems]
        report.good += not problems
    rates = {path: v[1] for (path, _), v in decoded.items() if not isinstance(v, str)}
    report.sample_rates.update(rates.values())  # each file once
    return report


def _example_problems(example: Example, seen: set[str], decoded: Decoded,
                      report: CheckReport, max_seconds: Seconds | None) -> list[str]:
    problems = []
    if example.id in seen:
        problems.append("id repeats an earlier example's")
    seen.add(example.id)
    if not example.target.strip():
        problems.append("empty target")
    for ref in example.audios:
        problem = _clip_problem(ref, decoded, report, max_seconds)
        if problem is not None:
            problems.append(problem)
    return problems
