"""Logits processors and token selection on hand-built logits; option validation."""

from __future__ import annotations

import math

import pytest
import torch

from lalm.errors import GenerationError
from lalm.generation import GenerationOptions
from lalm.generation.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    ban_tokens,
    process_logits,
    select_tokens,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 3.0, -4.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0, -4.0]]
    assert logits.tolist() == [[2.0, -1.0, 3.0, -4.0]]  # input untouched
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_ban_tokens_sets_minus_inf_and_ignores_ids_past_the_vocabulary() -> None:
    logits = torch.zeros(2, 4)
    out = ban_tokens(logits, [1, 3, 99])
    assert out.tolist() == [[0.0, -INF, 0.0, -INF]] * 2
    assert ban_tokens(logits, [99]) is logits


def test_temperature_scales_and_rejects_zero() -> None:
    logits = torch.tensor([[1.0, -2.0]])
    assert apply_temperature(logits, 0.5).tolist() == [[2.0, -4.0]]
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)


def test_top_k_keeps_the_k_best_per_row() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, -1.0, 5.0, 1.0]])
    out = top_k_filter(logits, 2)
    assert out.tolist() == [[-INF, 4.0, 3.0, -INF], [-INF, -INF, 5.0, 1.0]]
    assert top_k_filter(logits, 0) is logits
    assert top_k_filter(logits, 4) is logits


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # 0.5 < 0.7, then 0.5 + 0.3 reaches 0.7: two tokens
    assert torch.isfinite(top_p_filter(logits, 0.7)).tolist() == [[True, True, False, False]]
    # p below the top probability keeps the top token only
    assert torch.isfinite(top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]
    # order in the vocabulary does not matter
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(top_p_filter(shuffled, 0.7)).tolist() == [[False, True, False, True]]
    assert top_p_filter(logits, 1.0) is logits


def test_process_logits_order_and_greedy_skips_sampling_filters() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, False, False, False]])
    greedy = GenerationOptions(repetition_penalty=4.0, top_k=1)
    out = process_logits(logits, greedy, seen, banned=[2])
    assert out.tolist() == [[0.75, 2.0, -INF, 0.5]]  # top_k ignored without sampling
    sampled = GenerationOptions(temperature=2.0, top_k=2, repetition_penalty=4.0)
    out = process_logits(logits, sampled, seen, banned=[2])
    assert out.tolist() == [[0.375, 1.0, -INF, -INF]]
    with pytest.raises(ValueError, match="seen"):
        process_logits(logits, greedy, None, banned=[])


def test_select_tokens_argmax_and_seeded_draws() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [2.0, 0.0, 1.0]])
    assert select_tokens(logits, do_sample=False).tolist() == [1, 0]
    one_hot = torch.tensor([[-INF, 0.0, -INF]])
    assert select_tokens(one_hot, True, torch.Generator().manual_seed(0)).tolist() == [1]
    flat = torch.zeros(1, 50)
    draws = [select_tokens(flat, True, torch.Generator().manual_seed(s)).item() for s in range(5)]
    again = [select_tokens(flat, True, torch.Generator().manual_seed(s)).item() for s in range(5)]
    assert draws == again and len(set(draws)) > 1


def test_draws_follow_the_distribution() -> None:
    probs = torch.tensor([0.7, 0.2, 0.1])
    gen = torch.Generator().manual_seed(1)
    draws = select_tokens(probs.log().expand(20000, 3), True, gen)
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert torch.allclose(freq, probs, atol=0.02)


@pytest.mark.parametrize(("field", "value"), [
    ("max_new_tokens", 0), ("max_new_tokens", True), ("num_beams", 0), ("top_k", -1),
    ("temperature", -0.1), ("temperature", math.nan), ("top_p", 0.0), ("top_p", 1.5),
    ("repetition_penalty", 0.0), ("length_penalty", math.inf), ("min_new_tokens", 300),
    ("stop_token_ids", (-1,)), ("suppress_token_ids", ("a",)), ("stop_sequences", ("",)),
    ("seed", 2**64), ("seed", -1), ("seed", 1.5),
])
def test_bad_options_raise_generation_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(GenerationError, match=field):
        GenerationOptions(**{field: value})


def test_beam_search_with_sampling_is_refused() -> None:
    with pytest.raises(GenerationError, match="beam"):
        GenerationOptions(num_beams=2, temperature=0.7)
    assert not GenerationOptions().do_sample and GenerationOptions(temperature=0.3).do_sample
