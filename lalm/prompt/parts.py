"""Chat messages and their parts: `Message` with `TextPart` / `AudioPart` content, and where an
audio stands in plain text (`fill_audio_tags`, `user_message`: the ``<audio>`` tag of ms-swift /
LLaMA-Factory rows). An `AudioPart` only refers to its source: the prompt layer never loads
audio."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Union

from lalm.errors import PromptError

if TYPE_CHECKING:
    import numpy as np

AudioSource = Union[str, "os.PathLike[str]", bytes, "np.ndarray"]
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    """Text in a message."""

    text: str


@dataclass(frozen=True, eq=False)
class AudioPart:
    """An audio clip in a message or prompt, by reference (never loaded here).

    Attributes:
        source: a path, encoded file bytes, or a float waveform array [N].
        name: text written between ``<audio>`` and ``</audio>`` in v1 prompts (it never reaches
            the ids); default: the path, or ``"audio"`` for bytes/arrays.
    """

    source: AudioSource
    name: str | None = None

    @property
    def label(self) -> str:
        """The v1 ``<audio>label</audio>`` text."""
        if self.name is not None:
            return self.name
        if isinstance(self.source, (str, os.PathLike)):
            return os.fspath(self.source)
        return "audio"


Part = Union[TextPart, AudioPart]


@dataclass(frozen=True)
class Message:
    """One chat turn; ``content`` may be given as a plain string (one TextPart)."""

    role: Role
    content: tuple[Part, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise PromptError(f"Message.role must be system, user or assistant, not {self.role!r}")
        content = self.content
        parts = (TextPart(content),) if isinstance(content, str) else tuple(content)
        for p in parts:
            if not isinstance(p, (TextPart, AudioPart)):
                raise PromptError(f"Message content must be TextPart/AudioPart, got {p!r}")
        object.__setattr__(self, "content", parts)


#: Where an audio stands in plain text: ms-swift's and LLaMA-Factory's rows (``messages`` or
#: ShareGPT ``conversations``, with an ``audios`` list) and a chat prompt given as one string mark
#: each audio so, in order. Not a model token: it never stays in a message's text.
TEXT_AUDIO_TAG = "<audio>"


def split_audio_tags(text: str) -> list[str]:
    """The text before, between and after the `TEXT_AUDIO_TAG` s of ``text`` (n tags: n + 1
    pieces, some maybe empty)."""
    return text.split(TEXT_AUDIO_TAG)


def fill_audio_tags(messages: Sequence[Message], audios: Sequence[AudioPart]) -> list[Message]:
    """The messages with each ``<audio>`` tag of their text replaced by the next of ``audios``:
    "Listen to this: <audio> and tell me" becomes text, the audio, text, in that order.

    Raises:
        PromptError: the tags are not as many as the audios.
    """
    if not all(isinstance(m, Message) for m in messages):
        raise PromptError("fill_audio_tags needs a list of Message (lalm.prompt.Message)")
    tags = sum(p.text.count(TEXT_AUDIO_TAG) for m in messages for p in m.content
               if isinstance(p, TextPart))
    if tags != len(audios):
        raise PromptError(f"the text has {tags} {TEXT_AUDIO_TAG} tag(s) but {len(audios)} audios "
                          f"were given: put one tag where each audio goes (or give a message "
                          f"list with each audio as an AudioPart)")
    queue = iter(audios)
    out = []
    for m in messages:
        parts: list[Part] = []
        for part in m.content:
            if isinstance(part, AudioPart):
                parts.append(part)
                continue
            for k, piece in enumerate(split_audio_tags(part.text)):
                parts += [next(queue)] if k else []
                parts += [TextPart(piece)] if piece else []
        out.append(Message(m.role, tuple(parts)))
    return out


def user_message(text: str, audios: Sequence[AudioPart]) -> Message:
    """A user turn of ``text`` and ``audios``: each audio where an ``<audio>`` tag of the text
    stands (`fill_audio_tags`), or, with no tags, every audio before the text (blank text: none).

    Raises:
        PromptError: tags that are not as many as the audios.
    """
    if TEXT_AUDIO_TAG in text:
        return fill_audio_tags([Message("user", text)], audios)[0]
    return Message("user", (*audios, *([TextPart(text)] if text.strip() else [])))
