"""The decoder's decode layout (`TextDecoder.use_decode_layout`, applied by `setup_caches`):
the same weights stored [in, out]-major give the [out, in] path's logits (float32 summation
order aside) and its greedy tokens, batched and single; names, shapes, values, Parameter
objects and training are untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from lalm.generation import GenerationOptions, PromptBatch, generate, left_pad
from lalm.model import AudioLanguageModel, positions_from_mask
from lalm.testing.models import random_model

# float32 products summed in another order: observed ~1e-6 on the tiny model's logits
LOGITS_TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture()
def model() -> AudioLanguageModel:
    model = random_model("tiny-random", seed=5)
    with torch.no_grad():
        model.decoder.lm_head.weight.mul_(10.0)  # peaked distributions: no greedy near-ties
    return model


def _linears(model: AudioLanguageModel) -> dict[str, torch.nn.Linear]:
    return {n: m for n, m in model.decoder.named_modules() if isinstance(m, torch.nn.Linear)}


def _logits(model: AudioLanguageModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decoder(model.decoder.embed(ids), positions_from_mask(ids >= 0))


def _greedy_without_cache(model: AudioLanguageModel, row: list[int], n: int) -> list[int]:
    ids = list(row)
    for _ in range(n):
        ids.append(int(_logits(model, torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(row):]


def test_layout_changes_strides_only(model) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: m.weight for n, m in _linears(model).items()}
    assert all(w.is_contiguous() for w in params.values())
    model.decoder.use_decode_layout()
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name].shape == value.shape and torch.equal(after[name], value), name
    for name, linear in _linears(model).items():
        out_features = linear.weight.shape[0]
        assert linear.weight is params[name]  # optimizers keep their references
        assert linear.weight.stride() == (1, out_features), name
        assert linear.weight.t().is_contiguous()
    model.decoder.use_decode_layout()  # idempotent
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())


def test_logits_and_greedy_tokens_match_the_default_layout(model) -> None:
    reference = copy.deepcopy(model)  # stays [out, in]
    ids = torch.randint(0, 400, (3, 9), generator=torch.Generator().manual_seed(1))
    model.decoder.use_decode_layout()
    torch.testing.assert_close(_logits(model, ids), _logits(reference, ids), **LOGITS_TOL)
    rows = [ids[0].tolist(), ids[1, 4:].tolist(), ids[2, 2:].tolist()]
    padded, mask = left_pad(rows, pad_id=0)
    batch = PromptBatch(padded, mask, reference.decoder.embed(padded).detach())
    results = generate(model, batch, GenerationOptions(max_new_tokens=8), ())
    assert model.decoder.lm_head.weight.stride() == (1, model.config.decoder.vocab_size)
    for row, result in zip(rows, results):
        assert result.tokens == _greedy_without_cache(reference, row, 8)


def test_training_works_after_generation(model) -> None:
    with torch.inference_mode():
        model.decoder.setup_caches(1, 16)  # as the decode loop calls it
    model.decoder.clear_caches()
    ids = torch.randint(0, 400, (2, 6), generator=torch.Generator().manual_seed(2))
    out = model(ids, labels=ids)
    out.loss.backward()
    for linear in _linears(model).values():
        assert linear.weight.grad is not None
        assert linear.weight.grad.shape == linear.weight.shape


def test_other_dtypes_keep_their_layout() -> None:
    model = random_model("tiny-random", seed=5, dtype=torch.float64)
    model.decoder.use_decode_layout()
    assert all(m.weight.is_contiguous() for m in _linears(model).values())
