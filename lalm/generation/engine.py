"""The decode engine: the one owner of the decode loop (continuous batching over KV-cache slots).

Sequences join and leave between decode steps. Each `Generation` carries its own prompt
embeddings, `GenerationOptions`, stop ids and stop sequences, sampling seed and event stream;
`Engine.step` runs one step for all of them:

1. drop the sequences whose consumer left (`Engine.cancel`): their slots are free now;
2. admit waiting sequences into free slots (oldest first, within a prefill token budget):
   one left-padded prefill forward for the newcomers, on their rows of the cache only;
3. choose every running sequence's next token from its logits (rows grouped by options;
   a seeded row draws from its own generator), apply its stop rules, emit its `Event`;
4. finished sequences leave (their rows may be kept as reusable prefixes, see below);
5. one decode forward for every sequence still running (one new token per row).

The KV cache is allocated once per engine (`KVCache` with one row per slot; it grows to its
high-water mark in columns, never per call). Rows hold sequences of different lengths: each
row writes after its own filled columns and attends only to its own real columns, and RoPE
positions count each sequence's own tokens, so **a sequence gets the tokens it gets alone**,
whatever joins or leaves (tests/unit/test_engine.py proves it with randomized arrivals).

Prefix reuse: a sequence submitted with ``keys`` (one hashable per prompt position that
identifies its embedding: the token id, or the audio clip's digest and row for an audio slot)
starts from the longest prefix it shares with a running sequence or with a finished one kept in
the engine's prefix rows (``prefix_slots``, least recently used first out): those columns are
copied and only the rest of its prompt is prefilled. The KV of a prefix does not depend on what
follows it, so the tokens are those of a full prefill (tested).

Gated adapters (`lalm.model.lora.gate_adapters`): each sequence says whether the model's
adapters act on it (``adapted``, the pipeline's "its prompt holds audio"); every forward hands
the decoder its rows' flags (a forward with no adapted row skips the adapters' products:
`AdapterGate.shut_for`), and a prefix is shared only between sequences of one flag (its KV
differs between the two).

Beam search does not run here (its beams of one prompt reorder each other's caches every
step): `lalm.generation.generate.beam_search` keeps its own loop.

Shape alphabet: B rows, S prompt positions, D width, V vocabulary.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lalm.errors import GenerationError
from lalm.generation.options import (
    FinishReason,
    GenerationOptions,
    GenerationResult,
    TokenLogprob,
)
from lalm.generation.sampling import process_logits, select_tokens
from lalm.model import AudioLanguageModel, KVCache

Decode = Callable[[list[int]], str]
MAX_TOP_LOGPROBS = 20  # as OpenAI
MIN_PREFIX_TOKENS = 4  # shorter shared prefixes are prefilled again (a copy is not worth it)


def cut_at_stop(text: str, stop_sequences: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest stop sequence."""
    cuts = [i for i in (text.find(s) for s in stop_sequences) if i >= 0]
    return text[: min(cuts)] if cuts else text


def check_room(prompt_len: int, options: GenerationOptions, limit: int) -> int:
    """KV-cache columns a prompt needs (prompt + max_new_tokens).

    Raises:
        GenerationError: more than ``limit`` (the model's max_seq_len).
    """
    need = prompt_len + options.max_new_tokens
    if need > limit:
        raise GenerationError(
            f"prompt of {prompt_len} tokens + max_new_tokens {options.max_new_tokens} = {need} "
            f"exceeds the model's max_seq_len {limit}; lower max_new_tokens or shorten the prompt"
        )
    return need


class IncrementalDecoder:
    """Token ids in, text out, never splitting a multi-byte character.

    Byte-level BPE tokens may end inside a UTF-8 character; decoding such a prefix gives a
    trailing U+FFFD. Tokens are held back until their text decodes without one (or until
    `MAX_HELD` tokens show the bytes are genuinely invalid).

    Args:
        tokenizer: a tokenizer (its ``decode``) or a decode function (ids -> text).
    """

    MAX_HELD = 8  # a UTF-8 character spans at most 4 bytes, hence at most 4 tokens

    def __init__(self, tokenizer: Decode | object) -> None:
        self.decode: Decode = tokenizer if callable(tokenizer) else tokenizer.decode  # type: ignore[attr-defined]
        self._held: list[int] = []

    def push(self, token: int) -> str:
        """Add a token; returns the newly complete text (possibly "")."""
        self._held.append(token)
        text = self.decode(self._held)
        if text.endswith("\ufffd") and len(self._held) < self.MAX_HELD:
            return ""
        self._held = []
        return text

    def flush(self) -> str:
        """Whatever is still held (a truncated character becomes U+FFFD)."""
        text = self.decode(self._held)
        self._held = []
        return text


class TextStream:
    """A sequence's output text, released as it becomes final.

    The stop token is never shown; with stop sequences, the last ``max(len) - 1`` characters
    are held back until it is clear they do not start one, and the text ends before the first
    stop sequence. The pieces joined equal the finished result's text.
    """

    def __init__(self, decode: Decode, stop_sequences: Sequence[str]) -> None:
        self.decoder = IncrementalDecoder(decode)
        self.stops = tuple(stop_sequences)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""

    def push(self, token: int, finish_reason: FinishReason | None) -> str:
        """The text that ``token`` releases (all that is left when ``finish_reason`` is set)."""
        if finish_reason != "stop":
            self.pending += self.decoder.push(token)
        if finish_reason is not None:
            rest = cut_at_stop(self.pending + self.decoder.flush(), self.stops)
            self.pending = ""
            return rest
        if self.stops:
            self.pending = cut_at_stop(self.pending, self.stops)
        if len(self.pending) <= self.hold:
            return ""
        out, self.pending = (self.pending[: len(self.pending) - self.hold],
                             self.pending[len(self.pending) - self.hold:])
        return out


class _StopSequences:
    """Finds stop texts in the tail of a row's output, decoding only a few tokens."""

    def __init__(self, sequences: Sequence[str], decode: Decode | None) -> None:
        if sequences and decode is None:
            raise GenerationError("stop_sequences need a decode function (the tokenizer's)")
        self.sequences = tuple(sequences)
        self.decode = decode
        # a character is at most 4 UTF-8 bytes and a token at least 1: 4 * chars tokens suffice
        self.window = 4 * max((len(s) for s in sequences), default=0) + 1

    def hit(self, tokens: list[int]) -> bool:
        if not self.sequences or self.decode is None:
            return False
        tail = self.decode(tokens[-self.window:])
        return any(s in tail for s in self.sequences)


@dataclass(frozen=True)
class Event:
    """What one step gave one sequence.

    Attributes:
        token: the token chosen (the stop token included; see `finish_reason`).
        text: the text it releases (`TextStream`; "" while held back or without a decoder).
        finish_reason: set on the sequence's last event.
        logprob: its log-probabilities when the sequence records them, else None.
    """

    token: int
    text: str
    finish_reason: FinishReason | None
    logprob: TokenLogprob | None = None


class Generation:
    """One sequence in the engine: its inputs, its live result and its events.

    Attributes:
        result: tokens so far, log-probability, ``finish_reason`` (None while running; stays
            None for a cancelled sequence), ``token_logprobs`` when asked for.
        prompt_tokens: real prompt length S.
        cancelled: its consumer left; the engine drops it at the next step.
    """

    def __init__(self, embeds: Tensor, ids: Tensor, options: GenerationOptions,
                 stop_ids: Sequence[int], seed: int | None, keys: Sequence[Hashable] | None,
                 top_logprobs: int | None, text: TextStream | None,
                 on_event: Callable[[Event], None] | None, adapted: bool = False) -> None:
        self.embeds, self.ids = embeds, ids  # [S, D], [S]
        self.adapted = adapted  # gated adapters act on it
        self.options = options
        self.stop_ids = tuple(stop_ids)
        self.seed = seed
        self.keys = None if keys is None else list(keys)
        self.top_logprobs = top_logprobs
        self.text = text
        self.on_event = on_event
        self.prompt_tokens = int(ids.shape[0])
        self.result = GenerationResult(tokens=[], finish_reason=None, logprob=0.0,
                                       token_logprobs=None if top_logprobs is None else [])
        self.cancelled = False
        self.events: deque[Event] = deque()

    @property
    def done(self) -> bool:
        """Finished or cancelled: the engine holds it no more (after the next step)."""
        return self.cancelled or self.result.finish_reason is not None

    def take_events(self) -> list[Event]:
        """The events since the last call, oldest first."""
        out = list(self.events)
        self.events.clear()
        return out

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)


@dataclass
class _Row:
    """A running sequence's decode state; row i of the engine lives in cache row R + i."""

    gen: Generation
    pos: int  # RoPE position of its next token (= real tokens in its cache row)
    keys: list[Hashable] | None  # keys of the tokens in its cache row, in order
    key_cols: list[int]  # the cache column of each of those tokens
    generator: torch.Generator | None
    seen: Tensor | None  # [V] bool ids in prompt or output (repetition penalty)
    stops: _StopSequences
    next_token: int = -1


@dataclass
class _Prefix:
    """A finished sequence's cache row kept for reuse."""

    keys: list[Hashable]
    key_cols: list[int]
    used: float
    adapted: bool  # computed with gated adapters acting (`Generation.adapted`)


@dataclass
class EngineStats:
    """Counters (written under the engine's lock; read freely)."""

    steps: int = 0
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    prefill_tokens: int = 0  # prompt tokens computed
    reused_tokens: int = 0  # prompt tokens copied from a shared prefix instead
    prefix_lookups: int = 0
    prefix_hits: int = 0
    generated_tokens: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=256))

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        """Generated tokens per second over the last ``window_s`` seconds."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self.recent if now - t <= window_s]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span


def _policy(options: GenerationOptions) -> tuple[object, ...]:
    """The fields `process_logits` and `select_tokens` read: rows equal in them are processed
    in one call (their lengths, stops and seeds may differ)."""
    return (options.temperature, options.top_k, options.top_p, options.repetition_penalty)


def _common_prefix(a: Sequence[Hashable], b: Sequence[Hashable], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if n == limit or x != y:
            break
        n += 1
    return n


class Engine:
    """Continuous batching over one model (see the module docstring).

    Args:
        model: the model; the engine talks to it through ``decoder.embed``,
            ``decoder(embeds, input_pos, token_mask, output="last_logits")`` over its own
            `KVCache` (set as ``decoder.cache`` around each forward only).
        decode: ids -> text (the tokenizer's), for stop sequences and `Event.text`.
        slots: sequences running at once at most.
        prefix_slots: finished sequences kept as reusable prefixes (0: none).
        max_prefill_tokens: prompt tokens one step prefills at most (at least one newcomer
            is admitted whatever its length).
        max_seq_len: columns per sequence at most (default: the decoder's max_seq_len).
    """

    def __init__(self, model: AudioLanguageModel, decode: Decode | None = None, slots: int = 8,
                 prefix_slots: int = 0, max_prefill_tokens: int = 4096,
                 max_seq_len: int | None = None) -> None:
        if slots < 1 or prefix_slots < 0 or max_prefill_tokens < 1:
            raise GenerationError("Engine needs slots >= 1, prefix_slots >= 0 and "
                                  "max_prefill_tokens >= 1")
        self.model = model
        self.decode = decode
        self.slots = slots
        self.prefix_slots = prefix_slots
        self.max_prefill_tokens = max_prefill_tokens
        self.max_seq_len = max_seq_len or model.config.decoder.max_seq_len
        self.stats = EngineStats()
        self.cache: KVCache | None = None
        self._waiting: deque[Generation] = deque()
        self._rows: list[_Row] = []
        self._prefixes: list[_Prefix | None] = [None] * prefix_slots
        self._logits: Tensor | None = None  # [len(rows), V] next-token logits, or None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ public

    @property
    def running(self) -> int:
        """Sequences holding a slot."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Sequences submitted and not yet admitted."""
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether a step has anything to do."""
        return bool(self._rows or self._waiting)

    def reserve(self, slots: int) -> None:
        """Let at least ``slots`` sequences run at once (the cache grows when next used)."""
        with self._lock:
            self.slots = max(self.slots, slots)

    def submit(self, embeds: Tensor, ids: Tensor, options: GenerationOptions,
               stop_ids: Sequence[int], seed: int | None = None,
               keys: Sequence[Hashable] | None = None, top_logprobs: int | None = None,
               on_event: Callable[[Event], None] | None = None,
               adapted: bool | None = None) -> Generation:
        """Queue a sequence; it joins at the next step with a free slot.

        Args:
            embeds: [S, D] prompt embeddings (model dtype, the model's device).
            ids: [S] int64 prompt ids (the repetition penalty's seen tokens).
            options: its decoding policy (``num_beams == 1``).
            stop_ids: ids that end it (kept as its last token).
            seed: its sampling seed (None: ``options.seed``; both None: torch's global
                generator, whose draws then depend on the batch).
            keys: per prompt position, what identifies its embedding (prefix reuse); None:
                no reuse.
            top_logprobs: record each token's log-probability and this many alternatives
                (0..20) in ``result.token_logprobs``; None: not recorded.
            on_event: called with each `Event` (from the thread that steps the engine).
            adapted: whether the model's gated adapters act on it (module docstring); needed
                for a model with them, ignored without.

        Returns:
            Its `Generation`.

        Raises:
            GenerationError: beam search options, an empty prompt, a prompt +
                max_new_tokens beyond ``max_seq_len``, stop sequences without a decoder,
                keys or top_logprobs that do not fit, or a model with gated adapters and no
                ``adapted``.
        """
        if options.num_beams > 1:
            raise GenerationError("the engine does not beam search; use beam_search")
        n = int(ids.shape[0])
        if n == 0 or embeds.shape[0] != n:
            raise GenerationError("every prompt needs at least one token (and one embedding "
                                  "per token)")
        check_room(n, options, self.max_seq_len)
        if options.stop_sequences and self.decode is None:
            raise GenerationError("stop_sequences need a decode function (the tokenizer's)")
        if keys is not None and len(keys) != n:
            raise GenerationError(f"{len(keys)} prefix keys for a prompt of {n} tokens")
        if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise GenerationError(f"top_logprobs must lie in 0..{MAX_TOP_LOGPROBS}, got "
                                  f"{top_logprobs}")
        gated = self.model.decoder.adapter_gate is not None
        if gated and adapted is None:
            raise GenerationError("this model's LoRA adapters act on some sequences only: say "
                                  "whether they act on this one (adapted=)")
        text = None if self.decode is None else TextStream(self.decode, options.stop_sequences)
        gen = Generation(embeds, ids, options, stop_ids,
                         options.seed if seed is None else seed, keys, top_logprobs, text,
                         on_event, gated and bool(adapted))
        with self._lock:
            self._waiting.append(gen)
        return gen

    def cancel(self, gen: Generation) -> None:
        """Stop computing ``gen``; its slot is free at the next step."""
        gen.cancelled = True

    def run(self, gens: Sequence[Generation]) -> None:
        """Step until every one of ``gens`` is done (others advance too)."""
        while not all(g.done for g in gens):
            self.step()

    @torch.inference_mode()
    def step(self) -> None:
        """One step for every sequence (module docstring); a no-op when idle."""
        with self._lock:
            self._drop([row.gen.cancelled for row in self._rows], retain=False)
            while self._waiting and self._waiting[0].cancelled:
                self._waiting.popleft()
                self.stats.cancelled += 1
            self._admit()
            if not self._rows:
                return
            self.stats.steps += 1
            finished = self._choose()
            self._logits = None  # consumed
            self._drop(finished, retain=True)
            if self._rows:
                self._decode_step()

    # ------------------------------------------------------------------ the step's parts

    def _forward(self, first_row: int, embeds: Tensor, input_pos: Tensor,
                 adapted: Sequence[bool], token_mask: Tensor | None = None) -> Tensor:
        """Decoder forward on cache rows ``first_row ..`` of sequences with [B] `adapted`
        flags: [B, V] float32 last logits."""
        assert self.cache is not None
        decoder = self.model.decoder
        self.cache.use_rows(first_row, first_row + embeds.shape[0])
        decoder.cache = self.cache
        try:
            if decoder.adapter_gate is None:
                return decoder(embeds, input_pos, token_mask, output="last_logits")
            with decoder.adapter_gate.shut_for(not any(adapted)):
                return decoder(embeds, input_pos, token_mask, output="last_logits",
                               adapter_mask=torch.tensor(adapted, device=embeds.device))
        finally:
            decoder.cache = None

    def _ensure_cache(self, columns: int) -> KVCache:
        """The cache, with room for ``columns`` columns and every slot (grown by doubling)."""
        rows = self.prefix_slots + self.slots
        if self.cache is None:
            width = min(self.max_seq_len, max(64, 1 << (columns - 1).bit_length()))
            self.model.decoder.use_decode_layout()
            weight = self.model.decoder.norm.weight  # the compute dtype (lalm.model.upcast)
            cfg = self.model.config.decoder
            self.cache = KVCache(cfg.n_layer, rows, cfg.n_kv_head, width, cfg.head_dim,
                                 dtype=weight.dtype, device=weight.device)
        elif columns > self.cache.max_seq_len or rows > self.cache.batch_size:
            width = self.cache.max_seq_len
            while width < columns:
                width *= 2
            self.cache.grow(rows, min(width, self.max_seq_len))
        return self.cache

    def _candidates(self, adapted: bool) -> list[tuple[int, list[Hashable], list[int]]]:
        """(cache row, keys, key columns) of every row a newcomer of flag `adapted` may copy a
        prefix from."""
        out = [(i, p.keys, p.key_cols) for i, p in enumerate(self._prefixes)
               if p is not None and p.adapted == adapted]
        out += [(self.prefix_slots + i, r.keys, r.key_cols) for i, r in enumerate(self._rows)
                if r.keys is not None and r.gen.adapted == adapted]
        return out

    def _find_prefix(self, gen: Generation) -> tuple[int, int, int]:
        """(tokens reused P, source cache row, columns to copy) for a newcomer; P = 0: none."""
        if gen.keys is None or self.cache is None:
            return 0, -1, 0
        limit = gen.prompt_tokens - 1  # the last prompt token is prefilled: it gives logits
        best = (0, -1, 0)
        base = None
        for row, keys, cols in self._candidates(gen.adapted):
            n = _common_prefix(gen.keys, keys, limit)
            if n < max(MIN_PREFIX_TOKENS, best[0] + 1):
                continue
            if base is None:  # the RoPE base a full prefill would choose (dynamic NTK)
                base = self.model.decoder.rope_base(torch.tensor([gen.prompt_tokens],
                                                                 device=gen.ids.device))
            have = self.cache.row_rope_base(row)
            if have is None or not torch.equal(have, base.to(have.device)):
                continue
            best = (n, row, cols[n - 1] + 1)
        return best

    def _admit(self) -> None:
        """Prefill waiting sequences into free slots (step 2)."""
        free = self.slots - len(self._rows)
        batch: list[tuple[Generation, int, int, int]] = []  # (gen, P, source row, columns)
        width = budget = 0
        while self._waiting and len(batch) < free:
            gen = self._waiting[0]
            if gen.cancelled:
                self._waiting.popleft()
                self.stats.cancelled += 1
                continue
            reused, source, copied = self._find_prefix(gen)
            if copied + gen.prompt_tokens - reused + gen.options.max_new_tokens > self.max_seq_len:
                reused, source, copied = 0, -1, 0  # the source's pad columns do not fit
            new = gen.prompt_tokens - reused
            wide = max(width, new)
            fits = all(c + wide + g.options.max_new_tokens <= self.max_seq_len
                       for g, _, _, c in [*batch, (gen, reused, source, copied)])
            if batch and (budget + new > self.max_prefill_tokens or not fits):
                break
            batch.append((gen, reused, source, copied))
            self._waiting.popleft()
            self.stats.prefix_lookups += gen.keys is not None
            self.stats.prefix_hits += reused > 0
            width, budget = wide, budget + new
        if not batch:
            return
        need = max(c + width + g.options.max_new_tokens for g, _, _, c in batch)
        cache = self._ensure_cache(need)
        first = self.prefix_slots + len(self._rows)
        cache.reset_rows(first, first + len(batch))
        device = batch[0][0].embeds.device
        dim = batch[0][0].embeds.shape[1]
        embeds = torch.zeros(len(batch), width, dim, dtype=batch[0][0].embeds.dtype,
                             device=device)
        mask = torch.zeros(len(batch), width, dtype=torch.bool, device=device)
        starts = []
        for i, (gen, reused, source, copied) in enumerate(batch):
            if reused:
                cache.copy_row(source, first + i, copied)
            new = gen.prompt_tokens - reused
            embeds[i, width - new:] = gen.embeds[reused:]
            mask[i, width - new:] = True
            starts.append(reused)
        input_pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        input_pos += torch.tensor(starts, device=device)[:, None]
        lengths = torch.tensor([g.prompt_tokens for g, _, _, _ in batch], device=device)
        cache.use_rows(first, first + len(batch))
        cache.rope_base = self.model.decoder.rope_base(lengths)
        logits = self._forward(first, embeds, input_pos, [g.adapted for g, _, _, _ in batch],
                               mask)
        vocab = logits.shape[-1]
        for i, (gen, reused, source, copied) in enumerate(batch):
            new = gen.prompt_tokens - reused
            keys = cols = None
            if gen.keys is not None:
                src_cols = self._source_cols(source)[:reused]
                keys = list(gen.keys)
                cols = src_cols + list(range(copied + width - new, copied + width))
            seen = None
            if gen.options.repetition_penalty != 1.0:
                seen = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
                seen[gen.ids.clamp(max=vocab - 1).to(logits.device)] = True
            generator = None
            if gen.options.do_sample and gen.seed is not None:
                generator = torch.Generator(logits.device).manual_seed(gen.seed)
            self._rows.append(_Row(gen, gen.prompt_tokens, keys, cols or [], generator, seen,
                                   _StopSequences(gen.options.stop_sequences, self.decode)))
            self.stats.prefill_tokens += new
            self.stats.reused_tokens += reused
            self.stats.admitted += 1
        self._logits = logits if self._logits is None else torch.cat([self._logits, logits])

    def _source_cols(self, source: int) -> list[int]:
        if source < 0:
            return []
        if source < self.prefix_slots:
            prefix = self._prefixes[source]
            assert prefix is not None
            prefix.used = time.monotonic()
            return prefix.key_cols
        return self._rows[source - self.prefix_slots].key_cols

    def _choose(self) -> list[bool]:
        """Pick each row's next token from its logits (step 3); which rows finished."""
        logits = self._logits
        assert logits is not None
        # rows whose logits are processed alike share one call (`_policy`)
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, row in enumerate(self._rows):
            options = row.gen.options
            banned = tuple(options.suppress_token_ids)
            if len(row.gen.result.tokens) < options.min_new_tokens:
                banned += row.gen.stop_ids
            groups.setdefault((*_policy(options), banned), []).append(i)
        chosen = torch.empty(len(self._rows), dtype=torch.int64, device=logits.device)
        for key, index in groups.items():
            rows = [self._rows[i] for i in index]
            options, banned = rows[0].gen.options, key[-1]
            sub = logits[index] if len(index) < len(self._rows) else logits
            seen = None
            if options.repetition_penalty != 1.0:
                seen = torch.stack([r.seen for r in rows])  # type: ignore[misc]
            processed = process_logits(sub, options, seen, banned)
            generators = [r.generator for r in rows]
            picks = select_tokens(processed, options.do_sample,
                                  None if all(g is None for g in generators) else generators)
            chosen[torch.tensor(index, device=logits.device)] = picks
        log_probs = logits.log_softmax(dim=-1)
        token_lp = log_probs.gather(1, chosen[:, None])[:, 0].tolist()
        tokens = chosen.tolist()
        finished = []
        for i, (row, token, lp) in enumerate(zip(self._rows, tokens, token_lp)):
            gen, result = row.gen, row.gen.result
            result.tokens.append(token)
            result.logprob += lp
            record = None
            if result.token_logprobs is not None:
                k = gen.top_logprobs or 0
                top = log_probs[i].topk(k) if k else None
                record = TokenLogprob(token, lp, () if top is None else tuple(
                    zip(top.indices.tolist(), top.values.tolist())))
                result.token_logprobs.append(record)
            if token in gen.stop_ids:
                result.finish_reason = "stop"
            elif row.stops.hit(result.tokens):
                result.finish_reason = "stop_sequence"
            elif len(result.tokens) == gen.options.max_new_tokens:
                result.finish_reason = "length"
            if row.seen is not None:
                row.seen[token] = True
            row.next_token = token
            text = "" if gen.text is None else gen.text.push(token, result.finish_reason)
            gen._emit(Event(token, text, result.finish_reason, record))
            finished.append(result.finish_reason is not None)
        self.stats.generated_tokens += len(tokens)
        self.stats.recent.append((time.monotonic(), len(tokens)))
        self.stats.finished += sum(finished)
        return finished

    def _retain(self, i: int) -> None:
        """Keep row i's cache as a reusable prefix (LRU), unless a kept one covers it."""
        row = self._rows[i]
        if not self.prefix_slots or row.keys is None or self.cache is None:
            return
        slot = None
        for j, prefix in enumerate(self._prefixes):
            if prefix is None:
                slot = j if slot is None else slot
            elif prefix.adapted == row.gen.adapted and \
                    _common_prefix(prefix.keys, row.keys, len(prefix.keys)) == len(prefix.keys):
                slot = j  # it extends a kept prefix: replace that one
                break
        if slot is None:
            slot = min(range(self.prefix_slots), key=lambda j: self._prefixes[j].used)  # type: ignore[union-attr]
        self.cache.copy_row(self.prefix_slots + i, slot)
        self._prefixes[slot] = _Prefix(list(row.keys), list(row.key_cols), time.monotonic(),
                                       row.gen.adapted)

    def _drop(self, gone: list[bool], retain: bool) -> None:
        """Remove rows (finished or cancelled), filling their slots from the end (steps 1, 4)."""
        if not any(gone):
            return
        if not retain:
            self.stats.cancelled += sum(gone)
        cache = self.cache
        assert cache is not None
        for i, g in enumerate(gone):
            if g and retain:
                self._retain(i)
        keep = len(gone) - sum(gone)
        holes = [i for i in range(keep) if gone[i]]
        movers = [i for i in range(keep, len(gone)) if not gone[i]]
        order = list(range(keep))
        base = self.prefix_slots
        for hole, mover in zip(holes, movers):
            cache.copy_row(base + mover, base + hole)
            self._rows[hole] = self._rows[mover]
            order[hole] = mover
        del self._rows[keep:]
        cache.reset_rows(base + keep, base + len(gone))
        if self._logits is not None:
            self._logits = self._logits[order] if keep else None

    def _decode_step(self) -> None:
        """Feed every running row its chosen token: the next logits (step 5)."""
        assert self.cache is not None
        device = self._logits.device if self._logits is not None else None
        tokens = torch.tensor([[r.next_token] for r in self._rows], device=device)
        positions = torch.tensor([[r.pos] for r in self._rows], device=device)
        first = self.prefix_slots
        columns = self.cache.lengths[first:first + len(self._rows)]
        self._logits = self._forward(first, self.model.decoder.embed(tokens), positions,
                                     [r.gen.adapted for r in self._rows])
        for row, column in zip(self._rows, columns):
            row.pos += 1
            if row.keys is not None:
                row.keys.append(row.next_token)
                row.key_cols.append(column)
