"""Reading a checkpoint's JSON files (config.json, shard indexes) as untrusted input.

A published checkpoint directory is input like any other: its JSON may be invalid UTF-8, nested
past Python's recursion limit, or hold the wrong kind of value where a size or a section is
expected. Each of these is a `CheckpointError` naming the file and the field, never a
``UnicodeDecodeError``, ``RecursionError`` or ``TypeError`` from deep inside a translation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lalm.errors import CheckpointError

# The kinds a config field may be declared as (`check_kinds`): what JSON value each accepts.
Kind = type[int] | type[float] | type[bool] | type[str]


def read_json(path: Path) -> Any:
    """The parsed JSON of ``path``.

    Raises:
        CheckpointError: the file cannot be read, is not UTF-8, not JSON, or nested too deeply
            to parse (the message names the file).
    """
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason})"
                              ) from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a checkpoint file") from None


def section(data: Mapping[str, Any], key: str, source: str, prefix: str = "") -> dict[str, Any]:
    """``data[key]`` as a JSON object; {} when it is absent or null.

    Args:
        data: a JSON object.
        key: the field.
        source: the file, for the message.
        prefix: how the message names ``data`` ("text_config." or "").

    Raises:
        CheckpointError: the field holds something else (a list, a string, a number).
    """
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: {prefix}{key} must be a JSON object, got "
                              f"{type(value).__name__} {_show(value)}")
    return value


def check_kinds(values: Mapping[str, Any], kinds: Mapping[str, Kind], prefix: str,
                source: str) -> None:
    """Check that each field of ``kinds`` present in ``values`` holds its kind.

    ``int``: an integer (not a boolean); ``float``: a finite number; ``bool``: true or false;
    ``str``: a string. A field absent from ``values`` is not checked (its default applies).

    Args:
        values: a JSON object (a config section).
        kinds: field name -> kind.
        prefix: how the message names the section ("text_config." or "").
        source: the file, for the message.

    Raises:
        CheckpointError: naming the file, the field and the value found.
    """
    for name, kind in kinds.items():
        if name not in values:
            continue
        value = values[name]
        if kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            what = {int: "an integer", float: "a finite number", bool: "true or false",
                    str: "a string"}[kind]
            raise CheckpointError(f"{source}: {prefix}{name} must be {what}, got "
                                  f"{_show(value)}")


def _show(value: object) -> str:
    """A JSON value for a message, cut to 60 characters."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) \
        else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
