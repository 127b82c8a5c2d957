"""The one place that knows the whole data path (DESIGN.md):

    audio.load_audio -> audio.batch_log_mel (real length) -> prompt (build, encode with counts)
    -> tokenizer -> model.embed_audio / embed_prompt -> generate -> tokenizer.decode
    -> the family's parser (prompt.parse_output)

Callers (the CLI, the server, the evaluator) pass audio + text, a `Prompt`, or chat messages
(`Message`s or OpenAI / transformers dicts, `lalm.generation.messages`) and get
`GenerationResult`s with text and parsed fields. The prompt family (`lalm.prompt.FamilySpec`)
comes from the checkpoint's tokenizer; so do the real mel length rule and the ASR prompt; the
default decoding options come from its generation_config.json, as transformers reads it (`read_generation_config`), and a
call overrides them with ``options`` (an object or a dict) or keyword fields.

Audio longer than the encoder's 30-s window is never cut silently (`lalm.longform`):

* in a prompt (chat, analysis, any `Request`), a clip is split into <= 30-s windows, each is
  encoded, and the windows' rows fill the clip's single audio span in order (25 audio tokens
  per second); a clip longer than `Pipeline.max_audio_seconds` is an `AudioError`;
* `Pipeline.transcribe` with ``long_form`` transcribes a long clip window by window (cut in
  pauses found by voice activity, or fixed windows with overlap), all windows of all clips in
  one batched run, and stitches the windows' words (v1 SRWT word times) or texts. Its two
  steps around the model run are public, `plan_transcription` (a clip's prompts) and
  `stitch_transcription` (their results as one transcript with per-window segments), so that
  another runner (the server's batcher) transcribes long clips the same way.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lalm.audio import (
    HOP_LENGTH,
    LOOKAHEAD_FRAMES,
    SAMPLE_RATE,
    Seconds,
    batch_log_mel,
    load_audio,
    stream_audio,
)
from lalm.errors import AudioError, AudioTooLongError, CheckpointError, PromptError
from lalm.generation.encoder_cache import (
    DEFAULT_ENCODER_CACHE_MIB,
    EncoderCache,
    audio_digest,
    rows_digest,
)
from lalm.generation.engine import (
    Engine,
    Event,
    Generation,
    check_room,
    cut_at_stop,
)
from lalm.generation.generate import PromptBatch, beam_search, left_pad
from lalm.generation.messages import as_messages
from lalm.generation.options import GenerationOptions, GenerationResult, resolve_options
from lalm.longform import (
    DEFAULT_MAX_CHAT_S,
    DEFAULT_MAX_TRANSCRIBE_S,
    DEFAULT_OVERLAP_S,
    MAX_WINDOW_S,
    TOKENS_PER_SECOND,
    Window,
    WindowShare,
    join_window_rows,
    measure_loudness,
    plan_windows,
    speech_regions,
    split_for_chat,
    stitch_texts_by_window,
    stitch_words_by_window,
    window_clips,
)
from lalm.model import AudioLanguageModel
from lalm.prompt import (
    SPACELESS_LANGUAGES,  # languages written without spaces: one list, in the prompt layer
    AudioPart,
    AudioSource,
    FamilySpec,
    Message,
    ParsedOutput,
    Prompt,
    TaskSpec,
    TimedWord,
    build_chat_prompt,
    check_timestamps,
    fill_audio_tags,
    user_message,
)
from lalm.tokenizer import Tokenizer, load_tokenizer

# How `Pipeline.transcribe` treats a clip longer than one window: "vad" cuts windows in the
# pauses an energy voice-activity detector finds, "fixed" cuts fixed windows with overlap,
# None keeps the clip as one prompt (its windows' rows joined, as in chat).
LongForm = Literal["vad", "fixed"] | None
# Per-call decoding policy: GenerationOptions, a dict of its fields (over the pipeline's), None.
OptionsArg = GenerationOptions | Mapping[str, Any] | None


@dataclass(frozen=True)
class Request:
    """One prompt to run.

    Attributes:
        prompt: the prompt, audio parts included.
        spec: the v1 task it asks for, used to parse the output (timestamps, SRWT); None for
            free text.
        audio_rows: the prompt's audio already encoded (`Pipeline.encode_audio`), one [R_k, D]
            tensor per audio part in order, so `Pipeline.prepare` does not encode it again (a
            conversation's earlier clips); None to encode the parts.
    """

    prompt: Prompt
    spec: TaskSpec | None = None
    audio_rows: tuple[Tensor, ...] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TranscriptionPlan:
    """The prompts that transcribe one clip (`Pipeline.plan_transcription`).

    Attributes:
        requests: the prompts, in order: one for a clip sent whole; one per window of a long
            clip; none for a long recording in which voice activity finds no speech. (The
            plans `Pipeline.transcribe` keeps hold none: it decodes the windows as it runs.)
        windows: the windows of the recording that the requests transcribe, in order; None
            when the clip is one prompt.
        language: language of the speech (a prompt language tag).
        duration_s: length of the clip in seconds.
    """

    requests: tuple[Request, ...]
    windows: tuple[Window, ...] | None
    language: str
    duration_s: Seconds


@dataclass(frozen=True)
class TranscriptSegment:
    """A stretch of a transcribed recording: the whole clip, or one window's share of it.

    Attributes:
        start: where it starts in the recording, in seconds.
        end: where it ends; a window's bounds less any overlap its neighbour keeps
            (`lalm.longform.WindowShare`), so segments never overlap.
        text: what is said in it: the transcript's words that come from this prompt.
        words: those words with their times in the recording (v1 SRWT), else ().
        result: the prompt's own result (its tokens, log-probability and finish reason).
    """

    start: Seconds
    end: Seconds
    text: str
    words: tuple[TimedWord, ...]
    result: GenerationResult


@dataclass(frozen=True)
class Transcript:
    """One clip's transcription (`Pipeline.stitch_transcription`).

    Attributes:
        result: the clip's result, as `Pipeline.transcribe` returns it.
        segments: the clip's stretches in order: one for a clip sent whole, one per window of a
            long clip, none when no window was transcribed.
    """

    result: GenerationResult
    segments: tuple[TranscriptSegment, ...]


def read_generation_config(directory: str | Path, stop_ids: tuple[int, ...] = ()
                           ) -> GenerationOptions:
    """A checkpoint directory's decoding defaults: its ``generation_config.json`` as
    transformers reads it (`GenerationOptions.from_hf`; its eos ids join ``stop_ids``), else
    `GenerationOptions()` (greedy).

    Raises:
        CheckpointError: the file is not a JSON object or holds values lalm cannot run.
    """
    from lalm.checkpoint.save import GENERATION_CONFIG, read_generation_config as read

    config = read(directory)
    if config is None:
        return GenerationOptions()
    return GenerationOptions.from_hf(config, str(Path(directory) / GENERATION_CONFIG),
                                     stop_ids)


def check_transcription_options(family: FamilySpec, timestamps: bool, long_form: LongForm,
                                overlap_s: Seconds, window_s: Seconds = MAX_WINDOW_S) -> None:
    """Check transcription options before any audio or model is loaded.

    Raises:
        PromptError: ``timestamps`` for a family without timestamp tags (Qwen2-Audio).
        AudioError: ``long_form`` not "vad", "fixed" or None, or ``overlap_s`` out of range.
    """
    check_timestamps(family, timestamps)
    if long_form not in ("vad", "fixed", None):
        raise AudioError(f"long_form must be 'vad', 'fixed' or None, got {long_form!r}")
    if long_form is not None:  # the window planner's own overlap checks, on silence
        plan_windows(np.zeros(2 * round(window_s * SAMPLE_RATE), np.float32),
                     window_s=window_s, overlap_s=overlap_s)


def _prompt_count(plan: TranscriptionPlan) -> int:
    """How many prompts transcribe a planned clip: one per window, or one for the whole clip."""
    return 1 if plan.windows is None else len(plan.windows)


def as_audio_part(audio: AudioSource | AudioPart) -> AudioPart:
    """``audio`` as an `AudioPart` (a part passes through, keeping its name for messages)."""
    return audio if isinstance(audio, AudioPart) else AudioPart(audio)


class Pipeline:
    """A loaded model with its tokenizer and family: audio + text in, text out.

    Attributes:
        model: the model (eval mode).
        tokenizer: the checkpoint's tokenizer; its family picks prompt formats and mel lengths.
        family: the prompt family.
        options: default generation options (overridden per call): `from_pretrained` takes
            them from the checkpoint's generation_config.json, as transformers does.
        max_audio_seconds: longest clip a prompt takes, in seconds (None: no limit). A clip
            longer than the encoder's window costs 25 audio tokens per second all the same
            (`lalm.longform`); the default 300 s (7500 tokens) fits an 8192-position decoder.
        engine: the decode engine every generation of this pipeline (and of the server over
            it) runs on: `generate`, `stream`, conversations, eval.
        encoder_cache: encoded clips by a hash of their samples (`encoder_cache_mib` MiB).
    """

    def __init__(self, model: AudioLanguageModel, tokenizer: Tokenizer,
                 options: GenerationOptions | None = None,
                 max_audio_seconds: Seconds | None = DEFAULT_MAX_CHAT_S, *,
                 encoder_cache_mib: float = DEFAULT_ENCODER_CACHE_MIB,
                 prefix_slots: int = 4) -> None:
        if model.config.projector.audio_bos_eos != bool(tokenizer.family.boundary_rows):
            raise CheckpointError(
                f"tokenizer {tokenizer.source} is {tokenizer.family.name} but the model "
                f"{'has' if model.config.projector.audio_bos_eos else 'lacks'} the v1 audio "
                f"BOS/EOS rows")
        self.model = model
        self.tokenizer = tokenizer
        self.family = tokenizer.family
        self.options = options or GenerationOptions()
        self.max_audio_seconds = max_audio_seconds
        self.engine = Engine(model, tokenizer.decode, slots=8, prefix_slots=prefix_slots)
        self.encoder_cache = EncoderCache(encoder_cache_mib)

    @property
    def max_audio_seconds(self) -> Seconds | None:
        """Longest clip a prompt takes, in seconds; None for no limit."""
        return self._max_audio_seconds

    @max_audio_seconds.setter
    def max_audio_seconds(self, seconds: Seconds | None) -> None:
        number = isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
        if seconds is not None and not (number and seconds > 0):
            raise AudioError(f"max_audio_seconds must be a number > 0 or None, got {seconds!r}")
        self._max_audio_seconds = seconds

    @property
    def window_s(self) -> Seconds:
        """The encoder's window in seconds: 30 s (max_frames 3000 mel frames of 10 ms); a
        windowed encoder (Qwen2.5-Omni, Qwen3-ASR: `AudioEncoder.max_frames` None) takes any
        length, and long audio is cut into the 30 s windows of Whisper-style encoders."""
        frames = self.model.encoder.max_frames
        return MAX_WINDOW_S if frames is None else min(MAX_WINDOW_S,
                                                        frames * HOP_LENGTH / SAMPLE_RATE)

    @classmethod
    def from_pretrained(cls, path: str | Path, precision: str | torch.dtype | None = "auto",
                        device: str | torch.device = "cpu", *,
                        dtype: str | torch.dtype | None = None) -> Pipeline:
        """Load a checkpoint directory (weights, config.json and tokenizer files).

        ``precision`` ("auto": the checkpoint's own dtype, or "fp32" / "bf16" / "fp16"; the
        former name ``dtype`` still works) and ``device`` as in `lalm.checkpoint.load_model`.

        The default options come from the directory's ``generation_config.json`` as
        transformers' ``generate()`` reads it (`GenerationOptions.from_hf`: a released
        Instruct model samples at temperature 0.7, top_p 0.5, top_k 20, repetition penalty
        1.1 and stops at its eos ids); without the file, `GenerationOptions()` (greedy).
        A call's options or keyword fields override them.

        Raises:
            CheckpointError / TokenizerError: naming the directory and what is wrong.
        """
        from lalm.checkpoint import load_config, load_model

        model = load_model(path, precision, device, dtype=dtype)
        tokenizer = load_tokenizer(path, load_config(path)[1].family)
        return cls(model, tokenizer, read_generation_config(path, tokenizer.stop_ids))

    # ------------------------------------------------------------------ requests

    def chat_request(self, text: str | Sequence[Message | Mapping[str, Any]],
                     audios: Sequence[AudioSource | AudioPart] = ()) -> Request:
        """A chat prompt: a user turn of ``text`` and ``audios``, or a message list
        (`Message`s or OpenAI / transformers message dicts: `lalm.generation.messages`).

        Each ``<audio>`` tag in ``text`` (or, with ``audios``, in the messages' text) is where the
        next audio goes, as in ms-swift / LLaMA-Factory rows: "Listen: <audio> and tell me"
        keeps the audio between the two texts. A string without tags hears ``audios`` first.

        Raises:
            PromptError: an empty prompt (no text and no audio), tags that are not as many as the
                audios, or a malformed conversation.
        """
        parts = [as_audio_part(a) for a in audios]
        if isinstance(text, str):
            if not text.strip() and not audios:
                raise PromptError("empty prompt: give a question and/or audio")
            messages: Sequence[Message] = [user_message(text, parts)]
        else:
            messages = as_messages(text)
            messages = fill_audio_tags(messages, parts) if parts else messages
        return Request(build_chat_prompt(messages, self.family))

    def transcribe_request(self, audio: AudioSource | AudioPart, language: str = "en",
                           timestamps: bool = False) -> Request:
        """The family's speech-recognition prompt for one clip.

        v1: the official ``TaskSpec.asr`` task prompt, or ``TaskSpec.srwt`` (words with start
        and end times, ``<|timestamps|>``) with ``timestamps``. Qwen2-Audio: the base model's
        ``<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>``.

        Raises:
            PromptError: ``timestamps`` on a Qwen2-Audio checkpoint (it has no timestamp tags).
        """
        return Request(*self.family.asr_prompt(as_audio_part(audio), language, timestamps))

    # ------------------------------------------------------------------ the data path

    def encode_audio(self, parts: Sequence[AudioPart]) -> list[Tensor]:
        """Load and encode clips: the rows each clip's audio span takes, in one encoder batch.

        A clip longer than the encoder's window is split into near-equal windows
        (`lalm.longform.split_for_chat`); every window of every clip goes through the encoder
        together and each clip's windows are joined into one span (`join_window_rows`).

        Args:
            parts: the clips.

        Returns:
            One [R_k, D] tensor per clip in the model dtype: R_k = N_k audio tokens
            (Qwen2-Audio) or N_k + 2 with the v1 BOS/EOS rows; N_k = 25 per second.

        Raises:
            AudioError: a clip that cannot be loaded, or longer than `max_audio_seconds`.
        """
        if not parts:
            return []
        model = self.model
        windows: list[np.ndarray] = []
        owner: list[int] = []
        encoded: list[Tensor | None] = []  # per clip, its rows (from the cache, or below)
        keys: list[bytes] = []
        for k, part in enumerate(parts):
            try:  # decoding stops at the limit (or at the header's duration)
                clip = load_audio(part.source, max_seconds=self.max_audio_seconds)
            except AudioTooLongError as e:
                raise AudioTooLongError(
                    f"{part.label}: longer than max_audio_seconds={self.max_audio_seconds:g} s "
                    f"({TOKENS_PER_SECOND} audio tokens per second; {e}); raise the limit or "
                    "transcribe it with long-form windows") from None
            keys.append(audio_digest(clip))
            encoded.append(self.encoder_cache.get(keys[-1]))
            if encoded[-1] is not None:  # encoded before: the same rows
                continue
            pieces = split_for_chat(clip, self.window_s, max_duration_s=None)
            windows += pieces
            owner += [k] * len(pieces)
        if not windows:
            return [r for r in encoded if r is not None]
        features, lens = batch_log_mel(windows, model.config.encoder.n_mels,
                                       self.family.real_length)
        stem = model.encoder.stem_weight
        device, dtype = stem.device, stem.dtype
        # Windows of equal length are encoded together, each group unpadded: the encoder then
        # needs no attention mask (its fast path), and a clip's rows never depend on which other
        # clips share the call.
        rows: list[Tensor] = [torch.empty(0)] * len(windows)
        with torch.inference_mode():
            for length in lens.unique().tolist():
                group = (lens == length).nonzero().flatten()
                used = length + LOOKAHEAD_FRAMES
                out = model.embed_audio(features[group, :, :used].to(device, dtype),
                                        lens[group].to(device))
                for index, r in zip(group.tolist(), out):
                    rows[index] = r
        for k in sorted(set(owner)):
            encoded[k] = join_window_rows([r for r, o in zip(rows, owner) if o == k],
                                          boundary_rows=bool(self.family.boundary_rows))
            self.encoder_cache.put(keys[k], encoded[k])
        return [r for r in encoded if r is not None]

    def prepare(self, requests: Sequence[Request]) -> PromptBatch:
        """Load every clip, compute features, tokenize, embed: one left-padded batch.

        Clips of requests without `Request.audio_rows` are encoded together (`encode_audio`);
        requests with rows reuse them.

        Raises:
            AudioError: a clip that cannot be loaded, or longer than `max_audio_seconds`.
            PromptError: a prompt with no tokens, or `audio_rows` that do not fit its prompt.
        """
        return self._prepare(requests)[0]

    def _prepare(self, requests: Sequence[Request]
                 ) -> tuple[PromptBatch, list[list[Hashable]]]:
        """`prepare`, with each prompt's prefix keys (`Engine.submit`): per real position its
        token id, or for an audio slot the digest of its clip's rows and the row's index."""
        model, tokenizer = self.model, self.tokenizer
        fresh = iter(self.encode_audio(
            [a for r in requests if r.audio_rows is None for a in r.prompt.audios]))
        boundary = self.family.boundary_rows  # v1 BOS/EOS rows per clip
        slot_ids = tokenizer.audio_slot_ids
        ids_list, rows, keys = [], [], []
        for r in requests:
            audios = r.prompt.audios
            given = list(r.audio_rows) if r.audio_rows is not None else None
            if given is not None and len(given) != len(audios):
                raise PromptError(f"request has {len(audios)} audios but {len(given)} "
                                  f"audio_rows tensors")
            clip_rows = given if given is not None else [next(fresh) for _ in audios]
            counts = [int(x.shape[0]) - boundary for x in clip_rows]
            ids = r.prompt.encode(tokenizer, counts).ids
            if not ids:
                raise PromptError("empty prompt: it encodes to no tokens")
            slot_keys = iter([(rows_digest(x), j) for x in clip_rows
                              for j in range(x.shape[0])])
            keys.append([next(slot_keys, i) if i in slot_ids else i for i in ids])
            ids_list.append(ids)
            rows += clip_rows
        ids, mask = left_pad(ids_list, tokenizer.eod_id)
        device = model.decoder.embed.weight.device
        ids, mask = ids.to(device), mask.to(device)
        slots = torch.tensor(sorted(slot_ids), device=device)
        with torch.inference_mode():
            if not rows:
                embeds = model.decoder.embed(ids)
            else:
                embeds = model.embed_prompt(ids, [x.to(device) for x in rows],
                                            torch.isin(ids, slots) & mask)
        adapted = torch.tensor([bool(r.prompt.audios) for r in requests], device=device)
        return PromptBatch(ids=ids, token_mask=mask, embeds=embeds, adapted=adapted), keys

    def submit(self, requests: Sequence[Request], options: Sequence[GenerationOptions],
               top_logprobs: Sequence[int | None] | None = None,
               on_event: Sequence[Callable[[Event], None] | None] | None = None
               ) -> list[Generation]:
        """Prepare requests together (one encoder batch) and queue them on `engine`; all or
        none are queued. Step the engine (`Engine.step`, `Engine.run`) to run them; each
        finished result still needs `finish` (text, parsed fields).

        Args:
            requests: the prompts.
            options: each one's resolved options (``num_beams == 1``).
            top_logprobs: each one's `Engine.submit` ``top_logprobs`` (default None).
            on_event: each one's event callback (default None).

        Returns:
            One `Generation` per request.

        Raises:
            AudioError / PromptError: as `prepare`.
            GenerationError: a prompt + max_new_tokens beyond the engine's max_seq_len.
        """
        batch, keys = self._prepare(requests)
        lengths = batch.lengths.tolist()
        for n, option in zip(lengths, options):
            check_room(n, option, self.engine.max_seq_len)
        gens = []
        for b, option in enumerate(options):
            real = batch.token_mask[b]
            gens.append(self.engine.submit(
                batch.embeds[b][real], batch.ids[b][real], option, self.stop_ids(option),
                keys=keys[b], top_logprobs=None if top_logprobs is None else top_logprobs[b],
                on_event=None if on_event is None else on_event[b],
                adapted=bool(batch.adapted[b])))
        return gens

    def stop_ids(self, options: GenerationOptions) -> tuple[int, ...]:
        """Token ids that end generation: the options' own, else the tokenizer's chat stops."""
        if options.stop_token_ids is not None:
            return options.stop_token_ids
        return self.tokenizer.stop_ids

    def finish(self, result: GenerationResult, request: Request,
               options: GenerationOptions) -> GenerationResult:
        """Fill a finished result's `text` (stop token and stop sequences cut) and `parsed`."""
        tokens = result.tokens
        if result.finish_reason == "stop":
            tokens = tokens[:-1]
        result.text = cut_at_stop(self.tokenizer.decode(tokens), options.stop_sequences)
        result.parsed = self.family.parse(result.text, request.spec)
        return result

    def generate(self, requests: Sequence[Request], options: OptionsArg = None,
                 batch_size: int | None = None,
                 progress: Callable[[int], None] | None = None) -> list[GenerationResult]:
        """Run requests on the engine; results in request order.

        Requests are prepared ``batch_size`` at a time (one encoder batch each; at most two
        such batches are queued ahead) and join the engine as its slots free up (it has at
        least ``batch_size``): a request takes a slot as soon as another finishes, never
        waiting for a whole batch. Beam search runs in batches of ``batch_size`` on its own
        loop.

        Args:
            requests: the prompts.
            options: decoding policy: `GenerationOptions`, a dict of its fields over the
                pipeline's options, or None (the pipeline's).
            batch_size: prompts prepared together and slots reserved (default: all at once).
            progress: called with the number of requests finished, as they finish.

        Returns:
            One `GenerationResult` per request, with `text`, `parsed` and `timings`
            ("prepare": its batch's preparation; "generate": from its submission to its end).

        Raises:
            GenerationError: bad options (an unknown field is listed with the valid ones).
        """
        options = resolve_options(self.options, options)
        size = batch_size or max(len(requests), 1)
        if size < 1:
            raise PromptError(f"batch_size must be >= 1, got {batch_size}")
        if options.num_beams > 1:
            return self._beam_search(requests, options, size, progress)
        self.engine.reserve(size)
        results: list[GenerationResult | None] = [None] * len(requests)
        flying: list[tuple[int, Generation, float, float]] = []  # (index, gen, prepare, t)
        start = 0
        try:
            while start < len(requests) or flying:
                if start < len(requests) and len(flying) < 2 * size:  # a batch waits ready
                    chunk = requests[start:start + size]
                    t0 = time.perf_counter()
                    gens = self.submit(chunk, [options] * len(chunk))
                    t1 = time.perf_counter()
                    flying += [(start + k, g, t1 - t0, t1) for k, g in enumerate(gens)]
                    start += len(chunk)
                self.engine.step()
                now, left = time.perf_counter(), []
                for index, gen, prepared, t in flying:
                    if gen.done:
                        gen.result.timings = {"prepare": prepared, "generate": now - t}
                        results[index] = self.finish(gen.result, requests[index], options)
                    else:
                        left.append((index, gen, prepared, t))
                if progress is not None and len(left) < len(flying):
                    progress(len(flying) - len(left))
                flying = left
        finally:
            for _, gen, _, _ in flying:  # an error (or an interrupt): free their slots
                self.engine.cancel(gen)
        return [r for r in results if r is not None]

    def _beam_search(self, requests: Sequence[Request], options: GenerationOptions, size: int,
                     progress: Callable[[int], None] | None) -> list[GenerationResult]:
        """`generate` with ``num_beams > 1``: batches of ``size`` on beam search's loop."""
        results: list[GenerationResult] = []
        for start in range(0, len(requests), size):
            chunk = requests[start:start + size]
            t0 = time.perf_counter()
            batch = self.prepare(chunk)
            t1 = time.perf_counter()
            out = beam_search(self.model, batch, options, self.stop_ids(options),
                              self.tokenizer.decode)
            t2 = time.perf_counter()
            for request, result in zip(chunk, out):
                result.timings = {"prepare": t1 - t0, "generate": t2 - t1}
                results.append(self.finish(result, request, options))
            if progress is not None:
                progress(len(chunk))
        return results

    def stream(self, request: Request, options: OptionsArg = None) -> Iterator[str]:
        """Text pieces of one request's output as they are generated (greedy or sampling).

        Pieces never split a multi-byte character; with stop sequences, the last characters
        are held back until it is clear they do not start one (`lalm.generation.engine.
        TextStream`). The stop token is not shown. ``options`` as in `generate`. The request
        runs on the engine beside any others; leaving the loop early frees its slot.
        """
        options = resolve_options(self.options, options)
        (gen,) = self.submit([request], [options])
        try:
            while not gen.done:
                self.engine.step()
                for event in gen.take_events():
                    if event.text:
                        yield event.text
        finally:
            self.engine.cancel(gen)

    # ------------------------------------------------------------------ conveniences

    def chat(self, text: str | Sequence[Message | Mapping[str, Any]],
             audios: Sequence[AudioSource | AudioPart] = (), options: OptionsArg = None,
             **fields: Any) -> GenerationResult:
        """Answer one chat turn.

        Examples::

            pipe.chat("What is in the clip?", ["a.wav"], max_new_tokens=64)
            pipe.chat("Describe it.", ["a.wav"], options={"temperature": 0.7, "top_p": 0.9})
            pipe.chat([{"role": "user", "content": [
                {"type": "audio", "audio_url": "a.wav"},
                {"type": "text", "text": "What is in the clip?"}]}])
            pipe.chat([Message("user", (AudioPart("a.wav"), TextPart("And this?")))])

        Args:
            text: the user's question (may be "" with ``audios``: voice chat), or the whole
                conversation: `lalm.prompt.Message`s or message dicts in the OpenAI chat /
                transformers chat-template layouts (``{"role", "content"}``, content a string
                or a list of ``text`` / ``audio`` / ``audio_url`` / ``input_audio`` parts; see
                `lalm.generation.messages`), the last a user turn.
            audios: clips of the question's turn, before its text (paths, bytes, 16-kHz
                arrays or `AudioPart`s); only with a ``text`` string.
            options: decoding policy: `GenerationOptions`, a dict of its fields over the
                pipeline's options, or None (the pipeline's: the checkpoint's
                generation_config.json, else greedy).
            **fields: GenerationOptions fields over ``options``, e.g. ``max_new_tokens=64``,
                ``temperature=0``, ``stop_sequences=["\\n"]``.

        Returns:
            The answer: ``.text``, ``.tokens``, ``.finish_reason``, ``.avg_logprob``.

        Raises:
            PromptError: an empty or malformed conversation (the message says which item and
                the accepted shapes).
            GenerationError: an unknown option (the valid fields are listed) or a bad value.
            AudioError: a clip that cannot be loaded or is too long.
        """
        options = resolve_options(self.options, options, **fields)
        return self.generate([self.chat_request(text, audios)], options)[0]

    def transcribe(self, audios: Sequence[AudioSource], language: str = "en",
                   options: OptionsArg = None, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None, *, timestamps: bool = False,
                   long_form: LongForm = "vad", overlap_s: Seconds = DEFAULT_OVERLAP_S,
                   max_seconds: Seconds | None = DEFAULT_MAX_TRANSCRIBE_S,
                   **fields: Any) -> list[GenerationResult]:
        """Speech recognition for each clip (batched); read `.parsed.text` for the words.
        `transcribe_segments` gives the same with each clip's segments (subtitles).

        Each clip is planned into prompts (`plan_transcription`): one for a clip no longer than
        the encoder's window, else, with ``long_form``, one per window (cut in pauses with
        "vad", fixed windows overlapping by ``overlap_s`` with "fixed"). The prompts of all
        clips run in order in batches of ``batch_size``, then each clip's results are stitched
        (`stitch_transcription`): on v1 every window asks for SRWT (``<|timestamps|>``) and
        the words are joined by their times; on Qwen2-Audio (and for v1 windows whose output
        lacks the SRWT times) the window texts are joined by aligning their overlaps. A
        recording without speech ("vad") gives an empty result.

        Audio is never held whole: a long file is decoded twice, block by block, once to plan
        its windows (`lalm.longform.measure_loudness`) and once to cut them
        (`lalm.longform.window_clips`) as the batches need them, so at most ``batch_size``
        windows (plus one being cut) are in memory, whatever the recording's length.

        Transcription is greedy unless ``options`` / ``temperature`` say otherwise (as the
        server's /v1/audio/transcriptions and Whisper): the pipeline's options with
        temperature 0, so a checkpoint's sampling defaults do not apply; its other fields
        (stop ids, repetition penalty, max_new_tokens) do.

        Args:
            audios: the clips (paths, bytes, or float arrays at 16 kHz).
            language: language of the speech, a prompt language tag.
            options: decoding policy as in `chat` (default: the pipeline's).
            batch_size: prompts (clips or windows) per batch.
            progress: called with the number of clips finished after each batch.
            timestamps: words with start/end seconds in ``parsed.words`` (v1 only: SRWT).
            long_form: "vad", "fixed", or None to send a long clip as one prompt whose audio
                span holds all its windows' rows (as in chat; up to `max_audio_seconds`).
            overlap_s: overlap of neighbouring windows that cannot meet in a pause.
            max_seconds: longest clip accepted (None: no limit), checked from the file's
                header and while decoding; default 4 h.
            **fields: GenerationOptions fields over ``options`` (e.g. ``max_new_tokens=64``).

        Returns:
            One `GenerationResult` per clip, in order (`Transcript.result`).

        Raises:
            AudioError: a clip that cannot be loaded, longer than ``max_seconds``
                (`AudioTooLongError`), or a bad ``long_form`` / ``overlap_s``.
            PromptError: ``timestamps`` on a Qwen2-Audio checkpoint; a bad ``batch_size``.
            GenerationError: an unknown option or a bad value.
        """
        return [t.result for t in self.transcribe_segments(
            audios, language, options, batch_size, progress, timestamps=timestamps,
            long_form=long_form, overlap_s=overlap_s, max_seconds=max_seconds, **fields)]

    def transcribe_segments(self, audios: Sequence[AudioSource], language: str = "en",
                            options: OptionsArg = None, batch_size: int = 8,
                            progress: Callable[[int], None] | None = None, *,
                            timestamps: bool = False, long_form: LongForm = "vad",
                            overlap_s: Seconds = DEFAULT_OVERLAP_S,
                            max_seconds: Seconds | None = DEFAULT_MAX_TRANSCRIBE_S,
                            **fields: Any) -> list[Transcript]:
        """`transcribe`, with each clip's `Transcript`: its result and its segments (the whole
        clip, or one per window), what subtitles are made of (`lalm.subtitles.transcript_cues`;
        the server's verbose_json / srt / vtt use the same segments). Same arguments and errors
        as `transcribe`.
        """
        check_transcription_options(self.family, timestamps, long_form, overlap_s,
                                    self.window_s)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PromptError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        options = resolve_options(replace(self.options, temperature=0.0), options, **fields)
        plans: list[tuple[TranscriptionPlan, list[GenerationResult]]] = []
        pending: list[tuple[list[GenerationResult], Request]] = []  # the batch being filled
        out: list[Transcript] = []

        def finish_ready() -> None:  # stitch the clips whose every prompt has run, in order
            done = len(out)
            while len(out) < len(plans):
                plan, results = plans[len(out)]
                if len(results) < _prompt_count(plan):
                    break
                out.append(self.stitch_transcription(plan, results))
                plans[len(out) - 1] = (plan, [])  # its windows' results live on in `out`
            if progress is not None and len(out) > done:
                progress(len(out) - done)

        def run() -> None:
            results = self.generate([r for _, r in pending], options, batch_size)
            for (owner, _), result in zip(pending, results):
                owner.append(result)
            pending.clear()
            finish_ready()

        for audio in audios:
            plan, requests = self._plan_transcription(audio, language, timestamps, long_form,
                                                      overlap_s, max_seconds)
            plans.append((plan, []))
            for request in requests:  # a long clip's windows are decoded as they are needed
                pending.append((plans[-1][1], request))
                if len(pending) == batch_size:
                    run()
        if pending:
            run()
        finish_ready()
        return out

    def plan_transcription(self, audio: AudioSource, language: str = "en", *,
                           timestamps: bool = False, long_form: LongForm = "vad",
                           overlap_s: Seconds = DEFAULT_OVERLAP_S,
                           max_seconds: Seconds | None = DEFAULT_MAX_TRANSCRIBE_S
                           ) -> TranscriptionPlan:
        """The prompts that transcribe one clip: the step before the model run.

        A clip no longer than the encoder's window, or any clip with ``long_form`` None, is
        one prompt (`transcribe_request`). A longer one is planned into windows
        (`lalm.longform.plan_windows`: in the pauses `speech_regions` finds with "vad", fixed
        windows overlapping by ``overlap_s`` with "fixed"), one prompt per window; on v1 each
        window asks for SRWT word times, which `stitch_transcription` joins by. Run the
        requests (batched with any others), then pass their results to `stitch_transcription`.
        The plan holds every window's samples; `transcribe` streams them instead.

        Args:
            audio: the clip (a path, bytes, or float samples at 16 kHz).
            language: language of the speech, a prompt language tag.
            timestamps: words with start/end seconds (v1 only: SRWT).
            long_form: "vad", "fixed", or None (see `transcribe`).
            overlap_s: overlap of neighbouring windows that cannot meet in a pause.
            max_seconds: longest clip accepted (None: no limit); see `transcribe`.

        Returns:
            The plan: its requests, their windows and the clip's duration.

        Raises:
            AudioError: a clip that cannot be loaded or is too long, or a bad ``long_form`` /
                ``overlap_s``.
            PromptError: ``timestamps`` on a Qwen2-Audio checkpoint.
        """
        plan, requests = self._plan_transcription(audio, language, timestamps, long_form,
                                                  overlap_s, max_seconds)
        return replace(plan, requests=tuple(requests))

    def _plan_transcription(self, audio: AudioSource, language: str, timestamps: bool,
                            long_form: LongForm, overlap_s: Seconds, max_seconds: Seconds | None
                            ) -> tuple[TranscriptionPlan, Iterator[Request]]:
        """`plan_transcription`'s plan without requests, and its requests as an iterator that
        decodes the clip's windows one by one (for a clip longer than one window)."""
        check_transcription_options(self.family, timestamps, long_form, overlap_s,
                                    self.window_s)
        if long_form is None:  # one prompt: the chat limit applies as well
            limits = [x for x in (max_seconds, self.max_audio_seconds) if x is not None]
            max_seconds = min(limits, default=None)
        blocks = stream_audio(audio, max_seconds=max_seconds)
        head: list[np.ndarray] = []  # the first blocks, up to one window past the window
        window = round(self.window_s * SAMPLE_RATE)
        for block in blocks:
            head.append(block)
            if long_form is not None and sum(b.shape[0] for b in head) > window:
                break
        else:  # the whole clip fits one prompt
            clip = head[0] if len(head) == 1 else np.concatenate(head)
            # the loaded samples, under the source's name (error messages name the file)
            part = AudioPart(clip, name=as_audio_part(audio).label)
            plan = TranscriptionPlan((), None, language, clip.shape[0] / SAMPLE_RATE)
            return plan, iter([self.transcribe_request(part, language, timestamps)])
        loudness = measure_loudness(itertools.chain(head, blocks))  # the rest of the clip
        del head
        speech = speech_regions(loudness) if long_form == "vad" else None
        windows = plan_windows(loudness, window_s=self.window_s, overlap_s=overlap_s,
                               speech=speech)
        clips = window_clips(stream_audio(audio, max_seconds=max_seconds), windows)
        # where the family has word times, each window asks for them: windows stitch by them
        requests = (self.transcribe_request(clip, language, timestamps=self.family.timestamps)
                    for clip in clips)
        plan = TranscriptionPlan((), tuple(windows), language, loudness.n_samples / SAMPLE_RATE)
        return plan, requests

    def stitch_transcription(self, plan: TranscriptionPlan,
                             results: Sequence[GenerationResult]) -> Transcript:
        """One clip's transcript from the results of its plan's requests: the step after the
        model run (see `plan_transcription`).

        A clip sent whole keeps its result, as one segment over the clip. A windowed clip's
        results are stitched: on v1, when every window's output has SRWT word times (or is
        empty), by the words' times (`lalm.longform.stitch_words_by_window`, each boundary
        word once); else by aligning the texts' overlaps (`stitch_texts_by_window`). The
        stitched result has ``text`` = ``parsed.text`` (the joined words), ``parsed.words`` in
        recording seconds (v1), ``tokens`` / ``logprob`` of all its windows in order, and the
        ``timings`` of its last window; each window gives one segment with its share.

        Args:
            plan: the clip's plan.
            results: one finished result per request of the plan, in order.

        Returns:
            The clip's result and segments.

        Raises:
            AudioError: results and requests differ in number.
        """
        if len(results) != _prompt_count(plan):
            raise AudioError(f"{_prompt_count(plan)} requests but {len(results)} results")
        if plan.windows is None:
            (result,) = results
            parsed = result.parsed or ParsedOutput(result.text)
            return Transcript(result, (TranscriptSegment(0.0, plan.duration_s, parsed.text,
                                                         parsed.words, result),))
        spaceless = plan.language in SPACELESS_LANGUAGES
        sep = "" if spaceless else " "
        parsed = [r.parsed or ParsedOutput(r.text) for r in results]
        shares: list[WindowShare]
        # v1 windows are stitched by word times; a window whose output came without times
        # (malformed SRWT) has only text, and then the texts are aligned instead
        if self.family.timestamps and all(p.words or not p.text for p in parsed):
            shares = stitch_words_by_window(plan.windows, [p.words for p in parsed])
        else:
            shares = stitch_texts_by_window(plan.windows, [p.text for p in parsed], spaceless)
        text = sep.join(u for share in shares for u in share.units)
        words = tuple(w for share in shares for w in share.words)
        reasons = [r.finish_reason for r in results]
        result = GenerationResult(
            tokens=[t for r in results for t in r.tokens],
            finish_reason="length" if "length" in reasons else (reasons or ["stop"])[-1],
            logprob=sum(r.logprob for r in results),
            text=text,
            parsed=ParsedOutput(text, next((p.language for p in parsed if p.language), None),
                                words),
            timings=dict(results[-1].timings) if results else {},
        )
        segments = tuple(TranscriptSegment(share.start, share.end, sep.join(share.units),
                                           share.words, r)
                         for share, r in zip(shares, results))
        return Transcript(result, segments)

    def with_options(self, **changes: object) -> Pipeline:
        """A pipeline sharing model and tokenizer with other default options."""
        other = Pipeline(self.model, self.tokenizer, replace(self.options, **changes),
                         self.max_audio_seconds, prefix_slots=0)
        other.engine, other.encoder_cache = self.engine, self.encoder_cache  # shared
        return other
