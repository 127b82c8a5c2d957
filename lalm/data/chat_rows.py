"""The chat-row formats: ms-swift / LLaMA-Factory ``messages`` and LLaMA-Factory's ShareGPT.

Both are turns whose text marks each audio with an ``<audio>`` tag (`lalm.prompt.TEXT_AUDIO_TAG`),
taken in order from the row's ``audios`` list; a turn keeps where each of its audios stands
(`lalm.data.manifest.ExampleTurn.audio_at`), so a writer puts each tag back in its place. The
layouts are described in `lalm.data.formats`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lalm.data.manifest import AudioRef, Example, ExampleTask, ExampleTurn
from lalm.data.records import (
    CHAT_TASK,
    INSTRUCT_TASK,
    BadRecord,
    absolute_path,
    check_holds,
    portable_path,
    read_leniently,
    require_keys,
    write_json_lines,
)
from lalm.errors import DataError
from lalm.files import atomic_write
from lalm.prompt import TEXT_AUDIO_TAG, split_audio_tags

#: ShareGPT ``from`` values and the roles they are (LLaMA-Factory's default tags, and the
#: OpenAI names some ShareGPT files use).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
_SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "system": "system"}  # what is written


def _message(role: str, content: object, first_audio: int) -> ExampleTurn:
    """A turn whose `content` marks its audios with tags: they are audios first_audio, ..."""
    if not isinstance(content, str):
        raise DataError(f"message content must be a string, got {type(content).__name__}")
    pieces = split_audio_tags(content)
    text, at = pieces[0], []
    for piece in pieces[1:]:
        at.append(len(text))
        text += piece
    return ExampleTurn(role, text, tuple(range(first_audio, first_audio + len(at))), tuple(at))


def _chat_example(turns: Sequence[tuple[str, object]], record: dict[str, Any], default_id: str,
                  folder: Path) -> Example:
    """The example of a chat row: (role, content) turns and the row's ``audios`` and ``id``."""
    paths = record.get("audios", [])
    if not turns or not isinstance(paths, list):
        raise DataError("the turns must be a non-empty list and 'audios' a list")
    messages: list[ExampleTurn] = []
    for role, content in turns:
        messages.append(_message(role, content, sum(len(m.audios) for m in messages)))
    used = sum(len(m.audios) for m in messages)
    if used != len(paths):
        raise DataError(f"{used} {TEXT_AUDIO_TAG} tags but {len(paths)} audios")
    if messages[-1].role != "assistant":
        raise DataError("the last message must be the assistant's answer")
    if any(m.role == "system" for m in messages[1:]):
        raise DataError("a system message may only come first")
    if any(m.audios for m in messages if m.role == "assistant"):
        raise DataError(f"an assistant turn holds {TEXT_AUDIO_TAG}: lalm writes no audio")
    audios = tuple(AudioRef(absolute_path(p, folder)) for p in paths)
    users = [m for m in messages if m.role == "user"]
    instruction = users[-1].text if users else ""
    example_id = str(record.get("id", default_id))
    if [m.role for m in messages] == ["user", "assistant"] and len(audios) == 1 \
            and not messages[0].audio_at:  # the audio opens the request: a task prompt holds it
        return Example(example_id, audios, ExampleTask(INSTRUCT_TASK, instruction=instruction),
                       messages[-1].text)
    return Example(example_id, audios, ExampleTask(CHAT_TASK, instruction=instruction),
                   messages[-1].text, messages=tuple(messages))


def _turns(record: dict[str, Any], key: str, role_key: str, content_key: str
           ) -> list[tuple[str, object]]:
    """(role value, content) of each turn of ``record[key]``."""
    turns = record[key]
    if not isinstance(turns, list):
        raise DataError(f"{key!r} must be a list, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DataError(f"turn {i} of {key!r} must be an object with {role_key!r} and "
                            f"{content_key!r}, got {turn!r:.80}")
        out.append((turn[role_key], turn[content_key]))
    return out


def _messages_example(record: dict[str, Any], default_id: str, folder: Path) -> Example:
    require_keys(record, ("messages",), "messages")
    return _chat_example(_turns(record, "messages", "role", "content"), record, default_id, folder)


def _sharegpt_example(record: dict[str, Any], default_id: str, folder: Path) -> Example:
    require_keys(record, ("conversations",), "sharegpt")
    turns = []
    for i, (who, value) in enumerate(_turns(record, "conversations", "from", "value")):
        if who not in SHAREGPT_ROLES:
            raise DataError(f"turn {i}: 'from' {who!r} is not one of {', '.join(SHAREGPT_ROLES)}; "
                            f"tool turns (function_call, observation) and other roles are not "
                            f"supported")
        turns.append((SHAREGPT_ROLES[who], value))
    if record.get("tools"):
        raise DataError("'tools' is not supported: lalm trains no tool calls")
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise DataError(f"'system' must be a string, got {type(system).__name__}")
    if system and turns and turns[0][0] != "system":  # a system turn overrides the field
        turns.insert(0, ("system", system))
    return _chat_example(turns, record, default_id, folder)


def _chat_turns(example: Example, fmt: str, folder: Path
                ) -> tuple[list[tuple[str, str]], list[str]]:
    """(role, content with an <audio> tag where each audio stands) per turn, and the audio paths
    in tag order.

    Raises:
        DataError: an audio window, or a text that holds the tag itself (it would read back as
            an audio).
    """
    check_holds(example, fmt, several=True, window=False, turns=True)
    turns = example.messages or (ExampleTurn("user", example.task.instruction,
                                         tuple(range(len(example.audios)))),
                                 ExampleTurn("assistant", example.target))
    if any(TEXT_AUDIO_TAG in m.text for m in turns):
        raise DataError(f"example {example.id!r}: a message text holds {TEXT_AUDIO_TAG!r}, which "
                        f"format {fmt!r} reads as an audio")
    audios = [portable_path(example.audios[i].path, folder) for m in turns for i in m.audios]
    return [(m.role, "".join(TEXT_AUDIO_TAG if isinstance(p, int) else p for p in m.pieces()))
            for m in turns], audios


def _write_chat(path: Path, examples: Sequence[Example], fmt: str, record: Callable[
        [Example, list[tuple[str, str]], list[str]], dict[str, Any]]) -> int:
    """Write one `record` (example, turns, audio paths) per example; ``.json``: a JSON array."""
    records = [record(e, *_chat_turns(e, fmt, path.parent)) for e in examples]
    if path.suffix == ".json":  # LLaMA-Factory reads a JSON array
        atomic_write(path, json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8"))
        return len(records)
    return write_json_lines(path, records)


def read_messages(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    """The examples (or `BadRecord` s) of a ``messages`` file; `audio_dir` is unused."""
    return read_leniently(path, lambda d, i, _n: _messages_example(d, i, path.parent))


def write_messages(path: Path, examples: Sequence[Example]) -> int:
    """Write examples as ``messages`` rows; the number written."""
    return _write_chat(path, examples, "messages", lambda e, turns, audios: {
        "id": e.id, "messages": [{"role": r, "content": c} for r, c in turns], "audios": audios})


def read_sharegpt(path: Path, audio_dir: Path | None) -> Iterator[Example | BadRecord]:
    """The examples (or `BadRecord` s) of a ShareGPT file; `audio_dir` is unused."""
    return read_leniently(path, lambda d, i, _n: _sharegpt_example(d, i, path.parent))


def write_sharegpt(path: Path, examples: Sequence[Example]) -> int:
    """Write examples as ShareGPT rows (a system prompt as a first ``system`` turn)."""
    return _write_chat(path, examples, "sharegpt", lambda e, turns, audios: {
        "id": e.id, "conversations": [{"from": _SHAREGPT_FROM[r], "value": c} for r, c in turns],
        "audios": audios})
