"""Logits processors and token selection: pure functions over [B, V] float32 logits.

Each processor returns new logits (never modifies its input), so each one is testable with
hand-built logits. A filtered-out token gets -inf. `process_logits` applies them in the order
transformers applies its equivalents: repetition penalty, banned tokens, temperature, top-k,
top-p. Shape alphabet: B rows, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lalm.generation.options import GenerationOptions

NEG_INF = float("-inf")


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Discourage tokens already seen (CTRL, Keskar et al. 2019).

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it when
    negative, so ``penalty > 1`` always lowers it.

    Args:
        logits: [B, V] float32.
        seen: [B, V] bool, True for ids in the row's prompt or output so far.
        penalty: > 0; 1 leaves the logits unchanged.

    Returns:
        [B, V] float32.
    """
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def ban_tokens(logits: Tensor, token_ids: Sequence[int]) -> Tensor:
    """Set the logits of ``token_ids`` to -inf (suppressed tokens, stop ids before min length).

    Args:
        logits: [B, V] float32.
        token_ids: ids to ban; ids >= V are ignored (they cannot be generated anyway).

    Returns:
        [B, V] float32.
    """
    ids = [i for i in token_ids if i < logits.shape[-1]]
    if not ids:
        return logits
    out = logits.clone()
    out[:, ids] = NEG_INF
    return out


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature`` (temperature > 0; 1 leaves them unchanged)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to scale logits, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep each row's k largest logits (ties at the k-th value kept too); k = 0 keeps all.

    Args:
        logits: [B, V] float32.
        k: >= 0.

    Returns:
        [B, V] float32 with the others at -inf.
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al. 2019): keep the most likely tokens whose cumulative
    probability first reaches ``p``; always at least the most likely token.

    Args:
        logits: [B, V] float32.
        p: in (0, 1]; 1 keeps all.

    Returns:
        [B, V] float32 with the others at -inf.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass strictly before each token
    drop_sorted = before >= p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def process_logits(
    logits: Tensor,
    options: GenerationOptions,
    seen: Tensor | None,
    banned: Sequence[int],
) -> Tensor:
    """All of the options' processors, in transformers' order.

    Temperature, top-k and top-p apply only when sampling (``options.do_sample``).

    Args:
        logits: [B, V] float32 raw next-token logits.
        options: the decoding policy.
        seen: [B, V] bool ids seen so far (needed when ``repetition_penalty != 1``).
        banned: ids banned at this step (suppressed ids, plus stop ids before min_new_tokens).

    Returns:
        [B, V] float32.
    """
    if options.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("a repetition penalty needs the seen-token mask")
        logits = apply_repetition_penalty(logits, seen, options.repetition_penalty)
    logits = ban_tokens(logits, banned)
    if options.do_sample:
        logits = apply_temperature(logits, options.temperature)
        logits = top_k_filter(logits, options.top_k)
        logits = top_p_filter(logits, options.top_p)
    return logits


def select_tokens(
    logits: Tensor, do_sample: bool,
    generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
) -> Tensor:
    """Next token per row: argmax, or a draw from softmax(logits).

    Args:
        logits: [B, V] float32 processed logits.
        do_sample: draw instead of argmax.
        generator: source of randomness for the draw (on the logits' device): one for the
            whole batch, or one per row (None: torch's global generator for that row). With
            one per row, each row is drawn alone, so its draw does not depend on the others.

    Returns:
        [B] int64.
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if len(generator) != probs.shape[0]:
        raise ValueError(f"{len(generator)} generators for {probs.shape[0]} rows")
    return torch.cat([torch.multinomial(probs[row:row + 1], 1, generator=g)[:, 0]
                      for row, g in enumerate(generator)])
