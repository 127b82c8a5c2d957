"""Gated LoRA (`lalm.model.lora.gate_adapters`): a decoder's adapters act on the sequences that
hold audio only, in the model's forward (rows and packed segments), the decode engine (with
prefix reuse), the pipeline, training and the checkpoint (base weights + a PEFT adapter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lalm.checkpoint import load_model, save_model
from lalm.checkpoint.peft import AUDIO_ADAPTER, CONFIG_FILE
from lalm.config import ModelConfig
from lalm.errors import ConfigError, GenerationError
from lalm.generation import GenerationOptions, Pipeline
from lalm.generation.engine import Engine
from lalm.model.lora import LoRALinear, merge_lora
from lalm.testing.models import (audio_span, random_features, random_model,
                                 randomize_adapters_)
from lalm.tokenizer import load_tokenizer
from lalm.training.build import set_parts
from lalm.training.stages import LoraConfig, PartsConfig

START, SLOT, END = 3, 5, 4  # ids of a clip's span in the tiny vocabulary
DECODER_LORA = PartsConfig(encoder="frozen", projector="frozen", decoder="lora")


def _adapted(applies_to: str, config: ModelConfig | str = "tiny-random",
             seed: int = 2) -> torch.nn.Module:
    """random_model(config, seed) with decoder LoRA (seeded factors, non-zero B so the update
    shows)."""
    model = random_model(config, seed=seed)
    set_parts(model, DECODER_LORA, LoraConfig(rank=4, alpha=8.0, applies_to=applies_to))
    randomize_adapters_(model, seed=11, std=0.1)
    return model.eval()


def _audio_batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Row 0: text, a clip, text; row 1: text only (right-padded to row 0's length)."""
    features, lens = random_features([40], model.config.encoder.n_mels, seed=1)
    row0 = [7, 8, *audio_span(model, 40, START, SLOT, END), 9, 10]
    row1 = [11, 12, 13, 14, 15, 16]
    ids = torch.zeros(2, len(row0), dtype=torch.int64)
    ids[0], ids[1, :len(row1)] = torch.tensor(row0), torch.tensor(row1)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0], mask[1, :len(row1)] = True, True
    return {"ids": ids, "features": features, "feature_lens": lens,
            "audio_slot_mask": ids == SLOT, "token_mask": mask}


def test_gated_adapters_act_on_the_rows_that_hold_audio() -> None:
    base, plain, gated = random_model(seed=2), _adapted("all"), _adapted("audio")
    batch = _audio_batch(base)
    with torch.no_grad():
        want_audio = plain(**batch).logits[0]
        want_text = base(**batch).logits[1]
        got = gated(**batch).logits
    assert torch.allclose(got[0], want_audio, atol=1e-5)
    assert torch.allclose(got[1], want_text, atol=1e-5)
    assert not torch.allclose(base(**batch).logits[0], want_audio, atol=1e-3)  # it acts


def test_gated_adapters_act_per_segment_of_packed_rows() -> None:
    base, plain, gated = random_model(seed=2), _adapted("all"), _adapted("audio")
    features, lens = random_features([40], base.config.encoder.n_mels, seed=1)
    text = [11, 12, 13, 14]
    audio = [7, *audio_span(base, 40, START, SLOT, END), 9]
    ids = torch.tensor([text + audio])
    segments = torch.tensor([[0] * len(text) + [1] * len(audio)])
    inputs = {"features": features, "feature_lens": lens}
    with torch.no_grad():
        got = gated(ids, **inputs, audio_slot_mask=ids == SLOT, segment_ids=segments).logits[0]
        alone_text = base(torch.tensor([text])).logits[0]
        alone_audio = plain(torch.tensor([audio]), **inputs,
                            audio_slot_mask=torch.tensor([audio]) == SLOT).logits[0]
    assert torch.allclose(got[:len(text)], alone_text, atol=1e-5)
    assert torch.allclose(got[len(text):], alone_audio, atol=1e-5)


def test_a_gated_decoder_refuses_a_forward_that_does_not_say_where() -> None:
    gated = _adapted("audio")
    embeds = gated.decoder.embed(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="adapter_mask"):
        gated.decoder(embeds, torch.arange(3)[None])
    assert merge_lora(gated) == 0  # a gate cannot be merged
    with pytest.raises(GenerationError, match="adapted="):
        Engine(gated).submit(embeds[0], torch.tensor([1, 2, 3]), GenerationOptions(), ())


def _tokens(model: torch.nn.Module, embeds: torch.Tensor, ids: torch.Tensor,
            adapted: bool | None = None) -> list[int]:
    engine = Engine(model)
    gen = engine.submit(embeds, ids, GenerationOptions(max_new_tokens=6), (), adapted=adapted)
    engine.run([gen])
    return gen.result.tokens


def test_a_step_without_adapted_rows_skips_the_adapters(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    base, gated = random_model(seed=2), _adapted("audio")
    text_ids = torch.tensor([11, 12, 13, 14, 15, 16, 17, 18])
    text_embeds = base.decoder.embed(text_ids).detach()
    want = _tokens(base, text_embeds, text_ids)
    calls: list[int] = []
    update = LoRALinear.update
    monkeypatch.setattr(LoRALinear, "update", lambda self, x: calls.append(1) or update(self, x))
    assert _tokens(gated, text_embeds, text_ids, adapted=False) == want
    assert not calls  # no product of the factors for a text-only step
    assert _tokens(gated, text_embeds, text_ids, adapted=True) != want and calls
    assert gated.decoder.adapter_gate.shut is False  # reset after each step


def test_the_engine_gates_each_sequence_and_shares_prefixes_within_a_flag() -> None:
    base, plain, gated = random_model(seed=2), _adapted("all"), _adapted("audio")
    batch = _audio_batch(base)
    with torch.no_grad():
        audio_embeds = gated.embed_prompt(batch["ids"][:1], gated.embed_audio(
            batch["features"], batch["feature_lens"]), batch["audio_slot_mask"][:1])[0]
    audio_ids = batch["ids"][0]
    text_ids = torch.tensor([11, 12, 13, 14, 15, 16, 17, 18])
    text_embeds = base.decoder.embed(text_ids).detach()
    want_audio = _tokens(plain, audio_embeds, audio_ids)
    want_text = _tokens(base, text_embeds, text_ids)
    want_text_adapted = _tokens(plain, text_embeds, text_ids)
    assert want_text != want_text_adapted  # the adapters change the text's tokens

    engine = Engine(gated, slots=3, prefix_slots=2)
    options = GenerationOptions(max_new_tokens=6)
    keys = text_ids.tolist()
    gens = [engine.submit(audio_embeds, audio_ids, options, (), adapted=True),
            engine.submit(text_embeds, text_ids, options, (), keys=keys, adapted=False),
            engine.submit(text_embeds, text_ids, options, (), keys=keys, adapted=True)]
    engine.run(gens)
    assert [g.result.tokens for g in gens] == [want_audio, want_text, want_text_adapted]
    assert engine.stats.prefix_hits == 0  # the two text rows have other flags: no sharing
    # a kept prefix serves a newcomer of its own flag only
    again = [engine.submit(text_embeds, text_ids, options, (), keys=keys, adapted=f)
             for f in (False, True)]
    engine.run(again)
    assert [g.result.tokens for g in again] == [want_text, want_text_adapted]
    assert engine.stats.prefix_hits == 2


def _clip(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * np.arange(n) / 16000)
            ).astype(np.float32)


def test_the_pipeline_adapts_conversations_with_audio_and_no_others() -> None:
    from conftest import shared_fixture

    tokenizer = load_tokenizer(shared_fixture("qwen2_audio_tokenizer"))
    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    options = GenerationOptions(max_new_tokens=6)
    pipes = {name: Pipeline(model, tokenizer, options) for name, model in (
        ("base", random_model(config, seed=2)), ("plain", _adapted("all", config)),
        ("gated", _adapted("audio", config)))}
    gated = pipes["gated"]
    requests = [gated.chat_request("What is this sound?", [_clip(12000, 0)]),
                gated.chat_request("Say hello.")]
    got = gated.generate(requests, batch_size=2)
    audio = pipes["plain"].generate(requests[:1])[0]
    text = pipes["base"].generate(requests[1:])[0]
    for result, want in ((got[0], audio), (got[1], text)):
        assert result.tokens == want.tokens
        assert result.logprob == pytest.approx(want.logprob, abs=1e-4)
    assert pipes["plain"].generate(requests[1:])[0].logprob != pytest.approx(text.logprob)


def test_a_gated_model_saves_as_base_weights_plus_a_peft_adapter(tmp_path) -> None:
    from safetensors.torch import load_file

    gated, base = _adapted("audio"), random_model(seed=2)
    save_model(base, tmp_path / "base")
    save_model(gated, tmp_path / "gated")
    assert (tmp_path / "gated" / AUDIO_ADAPTER / CONFIG_FILE).is_file()
    ours = load_file(str(tmp_path / "gated" / "model.safetensors"))
    theirs = load_file(str(tmp_path / "base" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    loaded = load_model(tmp_path / "gated")
    assert loaded.decoder.adapter_gate is not None
    batch = _audio_batch(base)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, gated(**batch).logits, atol=1e-6)
    save_model(base, tmp_path / "gated")  # the folder now holds a plain model again
    assert not (tmp_path / "gated" / AUDIO_ADAPTER).exists()
    assert load_model(tmp_path / "gated").decoder.adapter_gate is None


def test_gated_adapters_learn_from_audio_items_only() -> None:
    with pytest.raises(ConfigError, match="parts.decoder: lora"):
        set_parts(random_model(), PartsConfig(encoder="lora", projector="frozen"),
                  LoraConfig(applies_to="audio"))
    gated = _adapted("audio").train()
    batch = _audio_batch(gated)
    labels = batch["ids"].clone()
    for row, want_grad in ((1, False), (0, True)):
        gated.zero_grad()
        one = {k: v[row:row + 1] if v.dim() > 1 and k != "features" else v
               for k, v in batch.items()}
        if row == 1:
            one = {k: one[k] for k in ("ids", "token_mask")}
        gated(**one, labels=labels[row:row + 1]).loss.backward()
        grads = [m.lora_a.grad for m in gated.modules() if isinstance(m, LoRALinear)]
        assert all(g is not None for g in grads)
        assert any(bool(g.abs().sum() > 0) for g in grads) == want_grad


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_a_gated_checkpoint_keeps_its_adapters_in_other_precisions(tmp_path,
                                                                   precision: str) -> None:
    gated = _adapted("audio")
    save_model(gated, tmp_path)
    loaded = load_model(tmp_path, precision)
    adapted = [m for m in loaded.modules() if isinstance(m, LoRALinear)]
    assert len(adapted) == 7 * gated.config.decoder.n_layer
    assert all(m.gate is loaded.decoder.adapter_gate for m in adapted)
    batch = _audio_batch(gated)
    with torch.no_grad():
        want = gated(**batch).logits
        got = loaded(**batch).logits
    assert float((got - want).abs().max() / want.abs().max()) < 0.05


def test_recomputed_blocks_keep_their_gate() -> None:
    from lalm.training.build import enable_grad_checkpointing

    grads = []
    for recompute in (False, True):
        gated = _adapted("audio").train()
        if recompute:
            enable_grad_checkpointing(gated)
        batch = _audio_batch(gated)
        gated(**batch, labels=batch["ids"]).loss.backward()
        grads.append([m.lora_a.grad for m in gated.modules() if isinstance(m, LoRALinear)])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
