"""Decoding policy as data: a frozen `GenerationOptions` and the `GenerationResult` it produces.

Defaults live here and only here; the CLI flags map one-to-one onto the fields
(``--max-new-tokens`` <-> ``max_new_tokens``). A checkpoint's ``generation_config.json``
becomes a pipeline's defaults as transformers reads it (`GenerationOptions.from_hf`); per-call
overrides (an options object, a dict or keyword fields) go through `resolve_options`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from lalm.errors import CheckpointError, GenerationError

if TYPE_CHECKING:
    from lalm.prompt import ParsedOutput

FinishReason = Literal["stop", "stop_sequence", "length"]


@dataclass(frozen=True)
class GenerationOptions:
    """How to pick the next tokens and when to stop.

    Greedy decoding is ``temperature == 0`` with ``num_beams == 1`` (the default); sampling is
    ``temperature > 0``; beam search is ``num_beams > 1`` (deterministic, temperature 0).
    """

    max_new_tokens: int = 256  # tokens generated after the prompt, at most
    min_new_tokens: int = 0  # stop tokens are banned until this many tokens were generated
    temperature: float = 0.0  # 0: greedy / beam search; > 0: sample from softmax(logits / t)
    top_k: int = 0  # sampling: keep the k most likely tokens (0: all)
    top_p: float = 1.0  # sampling: keep the smallest set with probability >= p (1: all)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in prompt or output (CTRL)
    num_beams: int = 1  # beam search width (1: no beam search)
    length_penalty: float = 1.0  # beam search: rank finished beams by logprob / length**this
    stop_token_ids: tuple[int, ...] | None = None  # None: the tokenizer's end-of-turn ids
    stop_sequences: tuple[str, ...] = ()  # texts that end the output (not included in .text)
    suppress_token_ids: tuple[int, ...] = ()  # ids never generated
    seed: int | None = None  # sampling seed (None: torch's global generator)

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> GenerationError:
            return GenerationError(f"GenerationOptions.{name} {rule}, got {getattr(self, name)!r}")

        for name in ("max_new_tokens", "num_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("min_new_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "must be an integer >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            raise bad("min_new_tokens", f"must be <= max_new_tokens ({self.max_new_tokens})")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise bad("temperature", "must be a finite number >= 0")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must lie in (0, 1]")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise bad("repetition_penalty", "must be a finite number > 0")
        if not math.isfinite(self.length_penalty):
            raise bad("length_penalty", "must be finite")
        if self.num_beams > 1 and self.temperature > 0:
            raise bad("temperature", "must be 0 with beam search (num_beams > 1)")
        for name in ("stop_token_ids", "suppress_token_ids"):
            ids = getattr(self, name)
            if ids is not None and any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                       for i in ids):
                raise bad(name, "must hold token ids (integers >= 0)")
        if any(not isinstance(s, str) or not s for s in self.stop_sequences):
            raise bad("stop_sequences", "must hold non-empty strings")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise bad("seed", "must be an integer in [0, 2**64) (torch.Generator's range)")

    @property
    def do_sample(self) -> bool:
        """Whether tokens are sampled (temperature > 0) rather than chosen deterministically."""
        return self.temperature > 0

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], source: str = "generation_config.json",
                stop_ids: tuple[int, ...] = ()) -> GenerationOptions:
        """The options transformers' ``generate()`` takes from a ``generation_config.json``.

        As `transformers.GenerationConfig` reads it: ``do_sample`` false (its default) is
        greedy or beam search, so ``temperature`` / ``top_k`` / ``top_p`` are unused (here
        temperature 0); ``do_sample`` true samples at ``temperature`` (default 1.0) with
        ``top_k`` (default 50; 0 or None: all) and ``top_p`` (default 1.0).
        ``repetition_penalty``, ``num_beams``, ``length_penalty``, ``max_new_tokens`` and
        ``min_new_tokens`` carry over; the ``eos_token_id`` ids (an id or a list) join
        ``stop_ids`` (the tokenizer's end-of-turn ids) in ``stop_token_ids``: they never
        replace them, as a v1 config lists only ``<|endoftext|>`` while its chat stops at
        ``<|im_end|>`` too. Other fields are not used (``max_length``, which counts the
        prompt, among them: without ``max_new_tokens`` lalm's 256 stays).

        Raises:
            CheckpointError: values lalm cannot run (e.g. beam search with sampling), naming
                ``source``.
        """
        def get(name: str, default: Any) -> Any:
            value = config.get(name)
            return default if value is None else value

        changes: dict[str, Any] = {}
        if get("do_sample", False):
            changes.update(temperature=get("temperature", 1.0), top_k=get("top_k", 50),
                           top_p=get("top_p", 1.0))
        for name in ("repetition_penalty", "num_beams", "length_penalty", "max_new_tokens",
                     "min_new_tokens"):
            if config.get(name) is not None:
                changes[name] = config[name]
        eos = config.get("eos_token_id")
        if eos is not None:
            eos = eos if isinstance(eos, list) else [eos]
            changes["stop_token_ids"] = tuple(dict.fromkeys([*stop_ids, *eos]))
        try:
            return cls(**changes)
        except GenerationError as e:
            raise CheckpointError(f"{source}: {e}") from e


_SEQUENCE_FIELDS = ("stop_token_ids", "stop_sequences", "suppress_token_ids")


def resolve_options(defaults: GenerationOptions,
                    options: GenerationOptions | Mapping[str, Any] | None = None,
                    **changes: Any) -> GenerationOptions:
    """The options of one call: ``options`` (or ``defaults``), then ``changes`` over them.

    Args:
        defaults: the pipeline's options (from the checkpoint's generation_config.json).
        options: a `GenerationOptions` (used as it is), a dict of GenerationOptions fields
            (over ``defaults``, e.g. ``{"max_new_tokens": 5}``), or None (``defaults``).
        **changes: GenerationOptions fields over the result, e.g. ``temperature=0.7``.

    Returns:
        The options; lists of ids or stop texts become tuples.

    Raises:
        GenerationError: ``options`` of another type, an unknown field (the message lists the
            valid ones) or a bad value.
    """
    if options is None:
        base = defaults
    elif isinstance(options, GenerationOptions):
        base = options
    elif isinstance(options, Mapping):
        base = _with_fields(defaults, dict(options), "options")
    else:
        raise GenerationError(f"options must be a GenerationOptions, a dict of its fields or "
                              f"None, got {type(options).__name__}")
    return _with_fields(base, changes, "keyword") if changes else base


def _with_fields(base: GenerationOptions, changes: dict[str, Any], what: str
                 ) -> GenerationOptions:
    valid = [f.name for f in fields(GenerationOptions)]
    unknown = sorted(str(k) for k in changes if k not in valid)
    if unknown:
        raise GenerationError(f"unknown generation option{'s' if len(unknown) > 1 else ''} "
                              f"({what}) {', '.join(unknown)}; valid: {', '.join(valid)}")
    for name in _SEQUENCE_FIELDS:
        value = changes.get(name)
        if isinstance(value, (list, tuple)):
            changes[name] = tuple(value)
        elif isinstance(value, (str, int)):
            raise GenerationError(f"GenerationOptions.{name} must be a list or tuple, "
                                  f"got {value!r}")
    return replace(base, **changes)


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and its most likely alternatives.

    Attributes:
        token: the token id.
        logprob: its log-probability (float32 log-softmax of the raw logits).
        top: the ``top_logprobs`` most likely ids at that step with theirs, best first.
    """

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class GenerationResult:
    """One prompt's output.

    Attributes:
        tokens: the generated ids, the final stop token included when there is one.
        text: the decoded output without the stop token and cut before a stop sequence
            (special tokens other than the stop token kept, e.g. v1 timestamps); "" until the
            pipeline decodes it.
        finish_reason: "stop" (a stop token), "stop_sequence" or "length" (max_new_tokens);
            None while the row is still being generated.
        logprob: sum of the model's log-probabilities of `tokens` (float32 softmax of the raw
            logits, before temperature or filters; for beam search the beam score, i.e. after
            the repetition penalty and banned tokens).
        parsed: `lalm.prompt.parse_output` of the text (task fields, timestamps), set by the
            pipeline.
        timings: seconds spent per stage, totals of the batch the prompt ran in: "prepare"
            (audio loading, features, encoder, tokenizing, embedding) and "generate" (prefill
            and decode); a long-form transcription has its last window's.
        token_logprobs: per generated token, its `TokenLogprob` (when asked for, e.g. the
            server's ``logprobs``); else None.
    """

    tokens: list[int]
    finish_reason: FinishReason | None
    logprob: float
    text: str = ""
    parsed: ParsedOutput | None = None
    timings: dict[str, float] = field(default_factory=dict)
    token_logprobs: list[TokenLogprob] | None = None

    @property
    def avg_logprob(self) -> float:
        """Mean log-probability per generated token (0 for an empty output)."""
        return self.logprob / len(self.tokens) if self.tokens else 0.0
