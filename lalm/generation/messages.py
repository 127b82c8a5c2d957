"""Chat messages in the shapes people pass, as lalm `Message`s (`as_messages`).

`Pipeline.chat` and `Conversation` take lalm's own `lalm.prompt.Message` (``Message("user",
(AudioPart("a.wav"), TextPart("What is it?")))``) or plain dicts in the layouts of the OpenAI
chat API and of transformers' chat templates; every part keeps its place in the turn:

    {"role": "user", "content": "Hi"}
    {"role": "user", "content": [
        {"type": "audio", "audio_url": "a.wav"},        # Qwen2-Audio's model card
        {"type": "audio", "audio": "a.wav"},            # transformers (also "path", "url")
        {"type": "audio_url", "audio_url": {"url": "file:///x/a.wav"}},  # vLLM / OpenAI-like
        {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}},  # OpenAI
        {"type": "text", "text": "What is in the clip?"},
    ]}

An audio source is a local path, a ``file://`` or base64 ``data:`` URL, encoded bytes or a
float waveform at 16 kHz; lalm's Python API does not fetch http(s) URLs (the server does, for
allowed prefixes).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlparse

from lalm.errors import PromptError
from lalm.prompt import AudioPart, AudioSource, Message, Part, TextPart

_HINT = ("give lalm.prompt.Message objects (from lalm.prompt import Message, AudioPart, "
         "TextPart) or dicts {'role': ..., 'content': str | [{'type': 'text', 'text': ...}, "
         "{'type': 'audio', 'audio_url' | 'audio' | 'path': ...}, ...]}")
_AUDIO_KEYS = ("audio", "audio_url", "path", "url", "input_audio")


def as_messages(messages: Sequence[Message | Mapping[str, Any]] | Message | Mapping[str, Any]
                ) -> list[Message]:
    """lalm messages from `Message`s and/or message dicts (module docstring), in order.

    Raises:
        PromptError: an item that is neither, naming its index and the accepted shapes.
    """
    if isinstance(messages, (Message, Mapping)):
        messages = [messages]
    out = []
    for i, message in enumerate(messages):
        if isinstance(message, Message):
            out.append(message)
        elif isinstance(message, Mapping):
            out.append(_message(message, f"messages[{i}]"))
        else:
            raise PromptError(f"messages[{i}] is a {type(message).__name__}; {_HINT}")
    return out


def _message(message: Mapping[str, Any], where: str) -> Message:
    if "role" not in message or "content" not in message:
        raise PromptError(f"{where} needs 'role' and 'content', has {sorted(message)}; {_HINT}")
    content = message["content"]
    if content is None or isinstance(content, str):
        return Message(message["role"], content or "")
    if not isinstance(content, Sequence):
        raise PromptError(f"{where}.content must be a string or a list of parts, got "
                          f"{type(content).__name__}; {_HINT}")
    return Message(message["role"],
                   tuple(_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)))


def _part(part: Any, where: str) -> Part:
    if isinstance(part, (TextPart, AudioPart)):
        return part
    if isinstance(part, str):
        return TextPart(part)
    if not isinstance(part, Mapping):
        raise PromptError(f"{where} is a {type(part).__name__}; {_HINT}")
    kind = part.get("type")
    if kind == "text" or (kind is None and "text" in part):
        if not isinstance(part.get("text"), str):
            raise PromptError(f"{where}: a text part needs 'text' (a string)")
        return TextPart(part["text"])
    key = next((k for k in _AUDIO_KEYS if part.get(k) is not None), None)
    if kind in ("audio", "audio_url", "input_audio", None) and key is not None:
        return AudioPart(_audio_source(part[key], f"{where}.{key}"))
    raise PromptError(f"{where}: unknown part {dict(part)!r:.120}; {_HINT}")


def _audio_source(value: Any, where: str) -> AudioSource:
    """A path, URL string, ``{"url": ...}`` or OpenAI ``{"data": b64}`` as an AudioSource."""
    if isinstance(value, Mapping):
        if "data" in value:  # OpenAI input_audio: base64 of the encoded file
            return _b64(value["data"], where)
        if "url" in value:
            value = value["url"]
        else:
            raise PromptError(f"{where} needs 'url' or 'data', has {sorted(value)}")
    if not isinstance(value, str):
        return value  # bytes, a waveform or a path object: `load_audio` checks it
    scheme = urlparse(value).scheme
    if scheme == "file":
        return unquote(urlparse(value).path)
    if scheme == "data":
        header, _, data = value.partition(",")
        if not header.endswith(";base64"):
            raise PromptError(f"{where}: a data: URL must be base64 (data:audio/wav;base64,...)")
        return _b64(data, where)
    if scheme in ("http", "https"):
        raise PromptError(f"{where}: lalm's Python API does not fetch {scheme} URLs; download "
                          f"the file and pass its path (or bytes)")
    return value


def _b64(data: Any, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise PromptError(f"{where}: not valid base64 audio ({e})") from e
