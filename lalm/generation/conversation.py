"""Multi-turn chat that encodes each clip once and prefills only each turn's new tokens.

The reference chat loops (Qwen-Audio-Chat's ``model.chat`` with its ``history``) rebuild the
whole conversation every turn and run the audio encoder again on every clip heard so far. A
`Conversation` keeps the conversation as `Message`s plus the audio rows of every clip already
encoded (`Pipeline.encode_audio`), so a turn encodes only its own new clips; the prompt it
sends is exactly the one the whole conversation rebuilt from scratch gives, with the same rows
in the audio slots, so the answer is the answer of the re-run.

    conv = Conversation(pipe)
    conv.ask("What do you hear?", audios=["a.wav", "b.wav"])
    conv.ask("Which of the two is louder?")   # a.wav and b.wav are not encoded again

Each turn runs on the pipeline's engine, whose prefix reuse (`lalm.generation.engine`) finds
the previous turn (prompt and answer) in its kept rows: only the new tokens are prefilled, with
the answer the full prefill gives (tests/unit/test_engine_caches.py).

Works for both families (v1 Qwen-Audio-Chat ChatML with ``Audio k:`` per message, and the
Qwen2-Audio-Instruct template with ``Audio k:`` over the conversation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from lalm.errors import PromptError
from lalm.generation.options import GenerationResult, resolve_options
from lalm.generation.pipeline import OptionsArg, Pipeline, Request, as_audio_part
from lalm.prompt import AudioPart, AudioSource, Message, build_chat_prompt, user_message


class Conversation:
    """A chat with history; each clip goes through the audio encoder once.

    Attributes:
        pipeline: the pipeline that answers.
        messages: the conversation so far (an optional system message, then user / assistant
            turns), as `build_chat_prompt` takes it.
    """

    def __init__(self, pipeline: Pipeline, system: str | None = None) -> None:
        self.pipeline = pipeline
        self.messages: list[Message] = [Message("system", system)] if system is not None else []
        self._rows: list[Tensor] = []  # [R_k, D] per clip of `messages`, in prompt order

    @property
    def audio_rows(self) -> tuple[Tensor, ...]:
        """The encoded rows of every clip heard so far, in prompt order ([R_k, D] each)."""
        return tuple(self._rows)

    def _turn(self, text: str, audios: Sequence[AudioSource | AudioPart]
              ) -> tuple[Message, Request]:
        """The next user message and the request for it (history + that message).

        Only the new clips are encoded here; the request carries every clip's rows, so
        `Pipeline.prepare` encodes nothing. The conversation is unchanged until `_record`.

        Raises:
            PromptError: a turn with neither text nor audio.
            AudioError: a new clip that cannot be loaded or is too long.
        """
        if not text.strip() and not audios:
            raise PromptError("empty prompt: give a question and/or audio")
        parts = [as_audio_part(a) for a in audios]
        user = user_message(text, parts)  # each audio at its <audio> tag, or all first
        prompt = build_chat_prompt([*self.messages, user], self.pipeline.family)
        rows = (*self._rows, *self.pipeline.encode_audio(parts))
        return user, Request(prompt, audio_rows=rows)

    def _record(self, user: Message, request: Request, answer: str) -> None:
        self.messages += [user, Message("assistant", answer)]
        self._rows = list(request.audio_rows or ())

    def ask(self, text: str = "", audios: Sequence[AudioSource | AudioPart] = (),
            options: OptionsArg = None, **fields: Any) -> GenerationResult:
        """Answer one user turn and add it, with the answer, to the conversation.

        Args:
            text: the question (may be empty with audio: voice chat).
            audios: clips of this turn, in order (encoded now, once).
            options: decoding policy as in `Pipeline.chat` (default: the pipeline's).
            **fields: GenerationOptions fields over ``options`` (e.g. ``max_new_tokens=64``).

        Returns:
            The answer's `GenerationResult`.
        """
        options = resolve_options(self.pipeline.options, options, **fields)
        user, request = self._turn(text, audios)
        result = self.pipeline.generate([request], options)[0]
        self._record(user, request, result.text)
        return result

    def stream(self, text: str = "", audios: Sequence[AudioSource | AudioPart] = (),
               options: OptionsArg = None, **fields: Any) -> Iterator[str]:
        """Like `ask`, as text pieces (`Pipeline.stream`); the turn is recorded at the end."""
        options = resolve_options(self.pipeline.options, options, **fields)
        user, request = self._turn(text, audios)
        pieces: list[str] = []
        for piece in self.pipeline.stream(request, options):
            pieces.append(piece)
            yield piece
        self._record(user, request, "".join(pieces))

