"""lalm's example record and its JSONL form.

One `Example` is one training or evaluation item: the audio it listens to (zero, one or
several clips, each optionally a window of a longer file), the task as typed fields (never as
rendered prompt text: `lalm.prompt` renders it for either checkpoint family), and the exact
target (text, single-choice answer, word timestamps). Readers and writers for other manifest
formats convert to and from this record.

JSONL: one JSON object per line, `Example.to_dict()` form. Writes are atomic (write to a
temporary file beside the target, then rename), so a killed writer never leaves half a manifest
that a reader could take for a whole one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lalm.errors import DataError
from lalm.files import atomic_write
from lalm.prompt import TimedWord

Seconds = float

#: Languages lalm-synth speaks and translates between (ISO 639-1, as Qwen-Audio's tags are).
LANGUAGES = ("en", "de", "zh", "es", "fr", "it", "ja", "ko")
SPLITS = ("train", "valid", "test")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class AudioRef:
    """One audio clip: a file, or the window [offset, offset + duration) of it.

    Attributes:
        path: file path; relative paths are relative to the manifest's folder.
        offset: start of the window in seconds.
        duration: length of the window in seconds; None means to the end of the file.
    """

    path: str
    offset: Seconds = 0.0
    duration: Seconds | None = None

    def __post_init__(self) -> None:
        if not self.path:
            raise DataError("audio path is empty")
        if self.offset < 0 or (self.duration is not None and self.duration <= 0):
            raise DataError(f"audio {self.path!r}: bad window offset={self.offset} "
                            f"duration={self.duration}")


@dataclass(frozen=True)
class ExampleTurn:
    """One chat turn.

    Attributes:
        role: ``system``, ``user`` or ``assistant``.
        text: the turn's text, without audio.
        audios: indices into `Example.audios` heard in this turn, in order (the prompt layer
            labels them ``Audio 1:``, ``Audio 2:`` …).
        audio_at: where each of `audios` stands in `text`, as a character offset (in order,
            non-decreasing): "Listen: <audio> and tell me" is ``text="Listen:  and tell me"``,
            ``audio_at=(8,)``. Empty: every audio before the text (all offsets 0 are stored so).
    """

    role: str
    text: str
    audios: tuple[int, ...] = ()
    audio_at: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise DataError(f"message role {self.role!r} is not one of {ROLES}")
        at = tuple(self.audio_at)
        if at and (len(at) != len(self.audios) or list(at) != sorted(at)
                   or not 0 <= at[0] <= at[-1] <= len(self.text)):
            raise DataError(f"message audio_at {at} must give one offset per audio "
                            f"({len(self.audios)}), non-decreasing, within the text "
                            f"({len(self.text)} characters)")
        object.__setattr__(self, "audio_at", () if not any(at) else at)

    def pieces(self) -> list[str | int]:
        """The turn in order: text pieces (non-empty) and audio indices where they stand."""
        at = self.audio_at or (0,) * len(self.audios)
        out: list[str | int] = []
        start = 0
        for index, offset in zip(self.audios, at):
            out += [self.text[start:offset]] if offset > start else []
            out.append(index)
            start = offset
        out += [self.text[start:]] if len(self.text) > start else []
        return out


@dataclass(frozen=True)
class ExampleTask:
    """The task as typed fields, enough to render either prompt family.

    Attributes:
        name: task name (e.g. ``"asr"``, ``"s2tt"``, ``"sound_event"``; lalm-synth's are listed in
            `lalm.synth.tasks.TASKS`).
        audio_language: language spoken in the audio, or None for non-speech audio.
        output_language: language of the answer text.
        timestamps: True when the answer carries word timestamps (`Example.words`).
        instruction: the request in natural language (the Qwen2-Audio / chat form), no tags.
        question: the question asked about the audio, for question-answering tasks.
        choices: the options of a single-choice question (the answer is one of them).
    """

    name: str
    audio_language: str | None = None
    output_language: str = "en"
    timestamps: bool = False
    instruction: str = ""
    question: str | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for lang in (self.audio_language, self.output_language):
            if lang is not None and lang not in LANGUAGES:
                raise DataError(f"task {self.name!r}: unknown language {lang!r}")
        if len(set(self.choices)) != len(self.choices):
            raise DataError(f"task {self.name!r}: repeated choices {self.choices}")


@dataclass(frozen=True)
class Example:
    """One item: audio, task, exact target.

    Attributes:
        id: unique id within its manifest.
        audios: the clips the item listens to (empty for text-only items).
        task: what is asked.
        target: the exact expected output text (for single-choice items, the answer itself).
        answer: the short exact answer (class label, number, choice text) where there is one.
        words: word-level timestamps of the spoken content, silences included.
        messages: a multi-turn conversation; the last assistant turn equals `target`.
        split: "train", "valid" or "test".
        metadata: generator parameters and anything else (JSON values).
    """

    id: str
    audios: tuple[AudioRef, ...]
    task: ExampleTask
    target: str
    answer: str | None = None
    words: tuple[TimedWord, ...] = ()
    messages: tuple[ExampleTurn, ...] = ()
    split: str = "train"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            raise DataError("example id is empty")
        if self.split not in SPLITS:
            raise DataError(f"example {self.id!r}: split {self.split!r} is not one of {SPLITS}")
        if self.task.choices and self.answer not in self.task.choices:
            raise DataError(f"example {self.id!r}: answer {self.answer!r} is not a choice")
        for w in self.words:
            if not 0 <= w.start <= w.end:
                raise DataError(f"example {self.id!r}: timed word {w.word!r}: bad span "
                                f"[{w.start}, {w.end}]")
        for m in self.messages:
            if any(not 0 <= i < len(self.audios) for i in m.audios):
                raise DataError(f"example {self.id!r}: message refers to a missing audio")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (plain dicts and lists); a message's empty ``audio_at`` is left out."""
        d = asdict(self)
        for m in d["messages"]:
            if not m["audio_at"]:
                del m["audio_at"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        """Build from the JSON form.

        Raises:
            DataError: a missing or unknown field, or a value of the wrong kind.
        """
        try:
            task = dict(d["task"])
            task["choices"] = tuple(task.get("choices", ()))
            return cls(
                id=d["id"],
                audios=tuple(AudioRef(**a) for a in d.get("audios", ())),
                task=ExampleTask(**task),
                target=d["target"],
                answer=d.get("answer"),
                words=tuple(TimedWord(**w) for w in d.get("words", ())),
                messages=tuple(ExampleTurn(m["role"], m["text"], tuple(m.get("audios", ())),
                                       tuple(m.get("audio_at", ())))
                               for m in d.get("messages", ())),
                split=d.get("split", "train"),
                metadata=dict(d.get("metadata", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"example {d.get('id', '?')!r} is malformed: {e!r}") from e


def dumps_example(example: Example) -> str:
    """One JSONL line (no newline) for an example; keys sorted so equal records are equal bytes."""
    return json.dumps(example.to_dict(), ensure_ascii=False, sort_keys=True)


def write_manifest(path: str | os.PathLike[str], examples: Iterable[Example]) -> int:
    """Write examples as JSONL, atomically. Returns the number written."""
    lines = [dumps_example(e) + "\n" for e in examples]
    atomic_write(path, "".join(lines).encode("utf-8"))
    return len(lines)


def iter_manifest(path: str | os.PathLike[str]) -> Iterator[Example]:
    """Yield the examples of a JSONL manifest in file order (blank lines are skipped).

    Raises:
        DataError: the file is missing, or a line is not JSON or not an example (the message
            names the file and line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Example.from_dict(json.loads(line))
            except (json.JSONDecodeError, DataError, AttributeError) as e:
                raise DataError(f"{path}:{n}: {e}") from e


def read_manifest(path: str | os.PathLike[str]) -> list[Example]:
    """All examples of a JSONL manifest (see `iter_manifest`)."""
    return list(iter_manifest(path))
