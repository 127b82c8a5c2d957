"""The one place that knows the whole data path (DESIGN.md):

    audio.load_audio -> audio.batch_log_mel (real length) -> prompt (build, encode with counts)
    -> tokenizer -> model.embed_audio / embed_prompt -> generate -> tokenizer.decode
    -> prompt.parse_output

Callers (the CLI, the server, the evaluator) pass audio + text, a `Prompt`, or chat messages
and get `GenerationResult`s with text and parsed fields. The prompt family comes from the
checkpoint's tokenizer; so does the real mel length rule (`REAL_LENGTH`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lalm.audio import RealLength, audio_token_count, batch_log_mel, load_audio
from lalm.errors import AudioError, CheckpointError, PromptError
from lalm.generation.generate import PromptBatch, generate, generate_steps, left_pad
from lalm.generation.options import GenerationOptions, GenerationResult
from lalm.model import AudioLanguageModel, conv_output_lengths
from lalm.prompt import (
    AudioPart,
    AudioSource,
    Family,
    Message,
    Prompt,
    TaskSpec,
    TextPart,
    build_base_prompt,
    build_chat_prompt,
    build_prompt,
    parse_output,
    tag,
)
from lalm.tokenizer import Tokenizer, load_tokenizer

# How each family's reference counts a clip's real mel frames (lalm.audio.RealLength):
# transformers' Qwen2AudioProcessor rounds a last partial hop up, Qwen-Audio v1 drops it.
REAL_LENGTH: dict[Family, RealLength] = {Family.QWEN2_AUDIO: "ceil", Family.QWEN_AUDIO: "floor"}

# Qwen2-Audio base-model ASR instruction (the official LibriSpeech evaluation's prompt).
QWEN2_ASR_INSTRUCTION = "Detect the language and recognize the speech: "


@dataclass(frozen=True)
class Request:
    """One prompt to run.

    Attributes:
        prompt: the prompt, audio parts included.
        spec: the v1 task it asks for, used to parse the output (timestamps, SRWT); None for
            free text.
    """

    prompt: Prompt
    spec: TaskSpec | None = None


class IncrementalDecoder:
    """Token ids in, text out, never splitting a multi-byte character.

    Byte-level BPE tokens may end inside a UTF-8 character; decoding such a prefix gives a
    trailing U+FFFD. Tokens are held back until their text decodes without one (or until
    `MAX_HELD` tokens show the bytes are genuinely invalid).
    """

    MAX_HELD = 8  # a UTF-8 character spans at most 4 bytes, hence at most 4 tokens

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._held: list[int] = []

    def push(self, token: int) -> str:
        """Add a token; returns the newly complete text (possibly "")."""
        self._held.append(token)
        text = self.tokenizer.decode(self._held)
        if text.endswith("\ufffd") and len(self._held) < self.MAX_HELD:
            return ""
        self._held = []
        return text

    def flush(self) -> str:
        """Whatever is still held (a truncated character becomes U+FFFD)."""
        text = self.tokenizer.decode(self._held)
        self._held = []
        return text


def _cut_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop sequence."""
    cuts = [i for i in (text.find(s) for s in stop_sequences) if i >= 0]
    return text[: min(cuts)] if cuts else text


class Pipeline:
    """A loaded model with its tokenizer and family: audio + text in, text out.

    Attributes:
        model: the model (eval mode).
        tokenizer: the checkpoint's tokenizer; its family picks prompt formats and mel lengths.
        family: the prompt family.
        options: default generation options (overridden per call).
    """

    def __init__(self, model: AudioLanguageModel, tokenizer: Tokenizer,
                 options: GenerationOptions | None = None) -> None:
        is_v1 = tokenizer.family is Family.QWEN_AUDIO
        if model.config.projector.audio_bos_eos != is_v1:
            raise CheckpointError(
                f"tokenizer {tokenizer.source} is {tokenizer.family.value} but the model "
                f"{'has' if model.config.projector.audio_bos_eos else 'lacks'} the v1 audio "
                f"BOS/EOS rows")
        self.model = model
        self.tokenizer = tokenizer
        self.family = tokenizer.family
        self.options = options or GenerationOptions()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str | torch.dtype = "fp32",
                        device: str | torch.device = "cpu") -> Pipeline:
        """Load a checkpoint directory (weights, config.json and tokenizer files).

        Raises:
            CheckpointError / TokenizerError: naming the directory and what is wrong.
        """
        from lalm.checkpoint import load_model

        return cls(load_model(path, dtype=dtype, device=device), load_tokenizer(path))

    # ------------------------------------------------------------------ requests

    def chat_request(self, text: str | Sequence[Message],
                     audios: Sequence[AudioSource] = ()) -> Request:
        """A chat prompt: a user turn with ``audios`` then ``text``, or a message list.

        Raises:
            PromptError: an empty prompt (no text and no audio), or a malformed conversation.
        """
        if isinstance(text, str):
            if not text.strip() and not audios:
                raise PromptError("empty prompt: give a question and/or audio")
            parts = [AudioPart(a) for a in audios]
            parts += [TextPart(text)] if text.strip() else []
            messages: Sequence[Message] = [Message("user", tuple(parts))]
        else:
            if audios:
                raise PromptError("with a message list, put audio in the messages (AudioPart)")
            messages = text
        return Request(build_chat_prompt(messages, self.family))

    def transcribe_request(self, audio: AudioSource, language: str = "en") -> Request:
        """The family's speech-recognition prompt for one clip.

        v1: the official ``TaskSpec.asr`` task prompt. Qwen2-Audio: the base model's
        ``<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>``.
        """
        part = AudioPart(audio)
        if self.family is Family.QWEN_AUDIO:
            spec = TaskSpec.asr(language)
            return Request(build_prompt(spec, part), spec)
        return Request(build_base_prompt([part], QWEN2_ASR_INSTRUCTION + tag(language)))

    # ------------------------------------------------------------------ the data path

    def prepare(self, requests: Sequence[Request]) -> PromptBatch:
        """Load every clip, compute features, tokenize, embed: one left-padded batch.

        Raises:
            AudioError: a clip that cannot be loaded, or longer than the encoder's window.
            PromptError: a prompt with no tokens.
        """
        model, tokenizer = self.model, self.tokenizer
        parts = [a for r in requests for a in r.prompt.audios]
        counts: list[int] = []
        rows = None
        if parts:
            clips = [load_audio(p.source) for p in parts]
            features, lens = batch_log_mel(clips, model.config.encoder.n_mels,
                                           REAL_LENGTH[self.family])
            n_ctx = model.config.encoder.n_ctx
            for part, n in zip(parts, conv_output_lengths(lens).tolist()):
                if n > n_ctx:
                    raise AudioError(f"{part.label}: longer than the encoder's {n_ctx * 2 // 100}"
                                     f" s window; split it into shorter clips")
            counts = [int(audio_token_count(n)) for n in lens.tolist()]
            device, dtype = model.decoder.embed.weight.device, model.decoder.embed.weight.dtype
            with torch.inference_mode():
                rows = model.embed_audio(features.to(device, dtype), lens.to(device))
        ids_list, used = [], 0
        for r in requests:
            n_audio = len(r.prompt.audios)
            ids = r.prompt.encode(tokenizer, counts[used:used + n_audio]).ids
            used += n_audio
            if not ids:
                raise PromptError("empty prompt: it encodes to no tokens")
            ids_list.append(ids)
        ids, mask = left_pad(ids_list, tokenizer.eod_id)
        device = model.decoder.embed.weight.device
        ids, mask = ids.to(device), mask.to(device)
        slots = torch.tensor(sorted(tokenizer.audio_slot_ids), device=device)
        with torch.inference_mode():
            if rows is None:
                embeds = model.decoder.embed(ids)
            else:
                embeds = model.embed_prompt(ids, rows, torch.isin(ids, slots) & mask)
        return PromptBatch(ids=ids, token_mask=mask, embeds=embeds)

    def _stop_ids(self, options: GenerationOptions) -> tuple[int, ...]:
        if options.stop_token_ids is not None:
            return options.stop_token_ids
        return self.tokenizer.stop_ids

    def _finish(self, result: GenerationResult, request: Request,
                options: GenerationOptions) -> GenerationResult:
        tokens = result.tokens
        if result.finish_reason == "stop":
            tokens = tokens[:-1]
        result.text = _cut_at_stop(self.tokenizer.decode(tokens), options.stop_sequences)
        result.parsed = parse_output(result.text, request.spec)
        return result

    def generate(self, requests: Sequence[Request], options: GenerationOptions | None = None,
                 batch_size: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[GenerationResult]:
        """Run requests in batches; results in request order.

        Args:
            requests: the prompts.
            options: decoding policy (default: the pipeline's).
            batch_size: prompts per batch (default: all at once).
            progress: called with the number of requests finished after each batch.

        Returns:
            One `GenerationResult` per request, with `text`, `parsed` and `timings`.
        """
        options = options or self.options
        size = batch_size or max(len(requests), 1)
        if size < 1:
            raise PromptError(f"batch_size must be >= 1, got {batch_size}")
        results: list[GenerationResult] = []
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            t0 = time.perf_counter()
            batch = self.prepare(chunk)
            t1 = time.perf_counter()
            out = generate(self.model, batch, options, self._stop_ids(options),
                           self.tokenizer.decode)
            t2 = time.perf_counter()
            for request, result in zip(chunk, out):
                result.timings = {"prepare": t1 - t0, "generate": t2 - t1}
                results.append(self._finish(result, request, options))
            if progress is not None:
                progress(len(chunk))
        return results

    def stream(self, request: Request, options: GenerationOptions | None = None
               ) -> Iterator[str]:
        """Text pieces of one request's output as they are generated (greedy or sampling).

        Pieces never split a multi-byte character; with stop sequences, the last characters
        are held back until it is clear they do not start one. The stop token is not shown.
        """
        options = options or self.options
        stop_ids = self._stop_ids(options)
        decoder = IncrementalDecoder(self.tokenizer)
        hold = max((len(s) for s in options.stop_sequences), default=1) - 1
        pending = ""
        for step in generate_steps(self.model, self.prepare([request]), options, stop_ids,
                                   self.tokenizer.decode):
            token, result = step.tokens[0], step.results[0]
            if token is not None and result.finish_reason != "stop":
                pending += decoder.push(token)
            if result.finish_reason is not None:
                break
            if options.stop_sequences:
                pending = _cut_at_stop(pending, options.stop_sequences)
            if len(pending) > hold:
                yield pending[: len(pending) - hold]
                pending = pending[len(pending) - hold:]
        rest = _cut_at_stop(pending + decoder.flush(), options.stop_sequences)
        if rest:
            yield rest

    # ------------------------------------------------------------------ conveniences

    def chat(self, text: str | Sequence[Message], audios: Sequence[AudioSource] = (),
             options: GenerationOptions | None = None) -> GenerationResult:
        """Answer one chat turn (see `chat_request`)."""
        return self.generate([self.chat_request(text, audios)], options)[0]

    def transcribe(self, audios: Sequence[AudioSource], language: str = "en",
                   options: GenerationOptions | None = None, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None) -> list[GenerationResult]:
        """Speech recognition for each clip (batched); read `.parsed.text` for the words."""
        requests = [self.transcribe_request(a, language) for a in audios]
        return self.generate(requests, options, batch_size, progress)

    def with_options(self, **changes: object) -> Pipeline:
        """A pipeline sharing model and tokenizer with other default options."""
        return Pipeline(self.model, self.tokenizer, replace(self.options, **changes))
