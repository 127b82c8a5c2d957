"""The prompt-length check a request passes before it is queued.

A prompt that cannot fit the model's context (``max_seq_len``: prompt tokens plus the
request's ``max_tokens``) is refused in the request handler with OpenAI's 400
``context_length_exceeded``, before it reaches the batcher: otherwise the batcher's one thread
would tokenize, pad and embed it (a 20 MB text takes seconds and gigabytes) while every other
request waits, only to fail it at generation.

Two steps, the cheap one first:

1. a lower bound of the prompt's tokens without tokenizing: each text piece takes at least
   ``ceil(bytes / longest token)`` tokens (byte-level BPE: a token is at most the longest
   vocabulary entry's bytes; the text is measured both as given and NFC-normalised, as the
   tokenizers normalise, and the smaller taken), and each clip exactly the audio tokens its
   length gives (`lalm.longform.chat_audio_token_count`);
2. only when that bound fits, the exact count (`Prompt.encode`), which the handler runs in a
   worker thread.
"""

from __future__ import annotations

import math
import unicodedata
from functools import cached_property

import numpy as np
import torch

from lalm.generation import GenerationOptions, Pipeline, Request
from lalm.longform import chat_audio_token_count
from lalm.prompt import AudioPart
from lalm.serve.inputs import ApiError, invalid


class PromptBudget:
    """Refuses prompts that cannot fit ``pipeline``'s context with their ``max_tokens``.

    Args:
        pipeline: the served model, tokenizer and family.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    @property
    def context(self) -> int:
        """Positions the model holds (prompt + generated tokens)."""
        return self.pipeline.model.config.decoder.max_seq_len

    @cached_property
    def longest_token_bytes(self) -> int:
        """UTF-8 bytes of the longest vocabulary entry, special tokens included (computed once;
        a token that decodes to U+FFFD counts 3 bytes, never less than its own bytes)."""
        tokenizer = self.pipeline.tokenizer
        return max(len(tokenizer.decode([i]).encode()) for i in range(len(tokenizer)))

    def _audio_tokens(self, part: AudioPart) -> int:
        """Positions a decoded clip takes: its audio tokens (+ v1's BOS/EOS rows)."""
        samples = part.source
        if not isinstance(samples, np.ndarray):
            raise TypeError("the server's prompts carry decoded clips (float arrays)")
        n = chat_audio_token_count(int(samples.shape[0]), self.pipeline.window_s,
                                   self.pipeline.family.real_length, self._window_tokens)
        return n + self.pipeline.family.boundary_rows

    def _window_tokens(self, mel_len: int) -> int:
        """Audio tokens of one window of ``mel_len`` real frames, by the model's own rule
        (`AudioLanguageModel.audio_row_counts`, less v1's BOS/EOS rows)."""
        rows = self.pipeline.model.audio_row_counts(torch.tensor([mel_len]))
        return int(rows[0]) - self.pipeline.family.boundary_rows

    def lower_bound(self, request: Request) -> int:
        """At most the prompt's token count, without tokenizing its text."""
        total = 0
        for piece in request.prompt.pieces:
            if isinstance(piece, AudioPart):
                total += self._audio_tokens(piece)
                continue
            text = piece.text
            size = min(len(text.encode()), len(unicodedata.normalize("NFC", text).encode()))
            total += math.ceil(size / self.longest_token_bytes)
        return total

    def exact(self, request: Request) -> int:
        """The prompt's token count, as `Pipeline.prepare` encodes it."""
        boundary = self.pipeline.family.boundary_rows
        counts = [self._audio_tokens(a) - boundary for a in request.prompt.audios]
        return len(request.prompt.encode(self.pipeline.tokenizer, counts).ids)

    def check(self, request: Request, options: GenerationOptions, param: str) -> int:
        """The prompt's token count, when it fits with ``options.max_new_tokens``.

        Blocks for as long as tokenizing the prompt takes: call it in a worker thread.

        Args:
            request: the prompt, clips decoded.
            options: its decoding options (``max_new_tokens`` is the request's max_tokens).
            param: the request field the prompt comes from (named in the error).

        Raises:
            ApiError: 400 ``context_length_exceeded`` naming the limit and the count ("at
                least N" when the cheap bound already decides).
        """
        room = self.context - options.max_new_tokens
        bound = self.lower_bound(request)
        if bound > room:
            raise self._too_long(f"at least {bound}", options, param)
        n = self.exact(request)
        if n > room:
            raise self._too_long(str(n), options, param)
        return n

    def _too_long(self, count: str, options: GenerationOptions, param: str) -> ApiError:
        return invalid(
            f"{param}: this model's maximum context length is {self.context} tokens "
            f"(max_seq_len); the prompt is {count} tokens and max_tokens asks for "
            f"{options.max_new_tokens} more; shorten the prompt or lower max_tokens",
            param, "context_length_exceeded")
