"""A prompt before tokenization (`Prompt`: text pieces and audio slots of one family) and its
ids (`Prompt.encode` -> `PromptIds`, each audio expanded to its N frame tokens); the ChatML
conversation checks of `build_chat_prompt`, whose rendering each family's chat template does."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

from lalm.errors import PromptError
from lalm.prompt.family import FamilySpec, family_spec
from lalm.prompt.parts import AudioPart, Message
from lalm.prompt.tokens import IM_END, IM_START, check_text

if TYPE_CHECKING:
    from lalm.tokenizer import Tokenizer


@dataclass(frozen=True)
class TextPiece:
    """Text of a prompt encoded in one tokenizer call, with the specials it may contain."""

    text: str
    allowed: Literal["all"] | frozenset[str] = "all"


#: One piece of a prompt: text, or an audio slot.
Piece = Union[TextPiece, AudioPart]


@dataclass(frozen=True)
class PromptIds:
    """A prompt's token ids with audio expanded.

    Attributes:
        ids: token ids [S].
        audio_spans: per audio k (prompt order), the [start, end) positions of ``ids`` that take
            its rows: v1 ``<audio>``, N x ``[[[AUDIO:modality]]]``, ``</audio>`` (N + 2 rows:
            BOS, frames, EOS); Qwen2-Audio the N ``<|AUDIO|>`` positions.
    """

    ids: list[int]
    audio_spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Prompt:
    """A prompt before tokenization: text pieces and audio slots in order, for one family."""

    family: FamilySpec
    pieces: tuple[Piece, ...]

    @property
    def audios(self) -> tuple[AudioPart, ...]:
        """The audio parts, in the order their rows are spliced in."""
        return tuple(p for p in self.pieces if isinstance(p, AudioPart))

    @property
    def text(self) -> str:
        """The prompt as one string (v1 audio as ``<audio>label</audio>``; v2 as ``<|AUDIO|>``)."""
        return "".join(p.text if isinstance(p, TextPiece) else self.family.audio_text(p.label)
                       for p in self.pieces)

    @classmethod
    def from_text(cls, text: str, family: FamilySpec | str,
                  audios: Sequence[AudioPart] | None = None) -> Prompt:
        """A prompt from raw text, as the references tokenize it (every special allowed).

        v1: each ``<audio>path</audio>`` is an audio (path = its source unless ``audios`` is
        given). Qwen2-Audio: each ``<|AUDIO|>`` is an audio, taken in order from ``audios``.

        Raises:
            PromptError: audio count differs from ``audios``, or a stray slot token.
        """
        family = family_spec(family)
        chunks = re.split(family.audio_text_pattern, text)
        texts, labels = chunks[0::2], chunks[1::2]
        if audios is None:
            if not family.labelled_audio and labels:
                raise PromptError(f"prompt text has {len(labels)} {family.audio_pad}; pass audios")
            audios = [AudioPart(label) for label in labels]
        elif len(audios) != len(labels):
            raise PromptError(f"prompt text has {len(labels)} audio slots but {len(audios)} "
                              f"audios were given")
        pieces: list[Piece] = []
        for i, chunk in enumerate(texts):
            check_text(chunk, family.slot_tokens, "prompt text")
            if chunk:
                pieces.append(TextPiece(chunk))
            if i < len(audios):
                pieces.append(audios[i])
        return cls(family, tuple(pieces))

    def encode(self, tokenizer: Tokenizer, audio_token_counts: Sequence[int]) -> PromptIds:
        """Token ids with each audio expanded to its frame tokens.

        Args:
            tokenizer: a tokenizer of this prompt's family.
            audio_token_counts: N_k for each audio in order (`lalm.audio.audio_token_count`).

        Raises:
            PromptError: wrong family or number of counts, or a negative count.
        """
        if tokenizer.family is not self.family:
            raise PromptError(f"a {self.family.name} prompt cannot be encoded with a "
                              f"{tokenizer.family.name} tokenizer ({tokenizer.source})")
        counts = list(audio_token_counts)
        if len(counts) != len(self.audios):
            raise PromptError(f"prompt has {len(self.audios)} audios but {len(counts)} audio "
                              f"token counts were given")
        if any(not isinstance(n, int) or n < 0 for n in counts):
            raise PromptError(f"audio token counts must be ints >= 0, got {counts}")
        ids: list[int] = []
        spans: list[tuple[int, int]] = []
        for piece in self.pieces:
            if isinstance(piece, TextPiece):
                ids += tokenizer.encode(piece.text, piece.allowed)
                continue
            start = len(ids)
            ids += tokenizer.audio_span_ids(counts[len(spans)])
            spans.append((start, len(ids)))
        return PromptIds(ids, tuple(spans))


def merge_texts(pieces: Sequence[Piece]) -> tuple[Piece, ...]:
    """Join neighbouring texts (with equal allowed sets): they are one tokenizer call."""
    out: list[Piece] = []
    for p in pieces:
        if isinstance(p, TextPiece) and out and isinstance(out[-1], TextPiece) \
                and out[-1].allowed == p.allowed:
            out[-1] = TextPiece(out[-1].text + p.text, p.allowed)
        elif not (isinstance(p, TextPiece) and not p.text):
            out.append(p)
    return tuple(out)


def chatml_pieces(messages: Sequence[Message], add_generation_prompt: bool,
                 specials: frozenset[str], audio: Callable[[AudioPart, int], list[Piece]]
                 ) -> tuple[Piece, ...]:
    """ChatML with audio, the chat templates' common shape: ``<|im_start|>role\n`` content
    ``<|im_end|>\n`` per turn, the k-th audio of the conversation (k from 1) written as
    ``audio(part, k)``, then ``<|im_start|>assistant\n`` when asked. Message text may not hold
    ``specials``."""
    pieces: list[Piece] = []
    count = 0
    for m in messages:
        pieces.append(TextPiece(f"{IM_START}{m.role}\n"))
        for part in m.content:
            if isinstance(part, AudioPart):
                count += 1
                pieces += audio(part, count)
            else:
                check_text(part.text, specials, f"{m.role} message text")
                pieces.append(TextPiece(part.text))
        pieces.append(TextPiece(f"{IM_END}\n"))
    if add_generation_prompt:
        pieces.append(TextPiece(f"{IM_START}assistant\n"))
    return merge_texts(pieces)


def build_chat_prompt(messages: Sequence[Message], family: FamilySpec | str, *,
                      add_generation_prompt: bool = True) -> Prompt:
    """A ChatML conversation with audio, as the family's chat model was trained on it
    (`FamilySpec.chat_template`).

    When the first message is not a system message, the family's default system prompt
    (`FamilySpec.default_system`: "You are a helpful assistant." for most) is inserted.

    Args:
        messages: an optional leading system message, then user/assistant turns.
        family: which chat format (a `FamilySpec` or its name).
        add_generation_prompt: end with the opening of an assistant turn (the last message must
            then be a user turn); False renders a finished conversation (e.g. for training).

    Raises:
        PromptError: a misplaced system message, no turns, or a conversation that ends wrongly.
    """
    family = family_spec(family)
    messages = list(messages)
    if not messages or not all(isinstance(m, Message) for m in messages):
        raise PromptError("build_chat_prompt needs a non-empty list of Message")
    if any(m.role == "system" for m in messages[1:]):
        raise PromptError("a system message may only come first")
    if messages[0].role != "system":
        messages.insert(0, Message("system", family.default_system))
    if len(messages) < 2:
        raise PromptError("a chat needs at least one user or assistant message")
    if add_generation_prompt and messages[-1].role != "user":
        raise PromptError("add_generation_prompt needs the last message to be a user turn")
    return Prompt(family, family.chat_template(messages, add_generation_prompt))
