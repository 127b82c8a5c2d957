"""The model layer on tiny random configs: config, real-length encoder, splicing, KV cache,
left padding, dynamic NTK / logn, loss, freeze switches."""

from __future__ import annotations

import math

import pytest
import torch

from lalm.config import PRESETS, ModelConfig, fast_on, resolve_dtype
from lalm.errors import ConfigError
from lalm.model import AudioLanguageModel, positions_from_mask
from lalm.model.layers import logn_scale, ntk_alpha
from lalm.testing.models import random_features, random_model


@pytest.fixture(scope="module")
def model() -> AudioLanguageModel:
    return random_model("tiny-random", seed=0)


@pytest.fixture(scope="module")
def v1_model() -> AudioLanguageModel:
    return random_model("tiny-random-v1", seed=1)


# --- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta_and_round_trips_json(name: str, tmp_path) -> None:
    config = ModelConfig.from_name(name)
    with torch.device("meta"):
        AudioLanguageModel(config)
    config.to_file(tmp_path / "c.json")
    assert ModelConfig.from_file(tmp_path / "c.json") == config


def test_from_name_overrides_and_validation_names_the_field() -> None:
    config = ModelConfig.from_name("qwen2-audio-7b", decoder={"n_layer": 2, "dim": 64})
    decoder = config.decoder
    assert (decoder.n_layer, decoder.dim, decoder.vocab_size) == (2, 64, 156032)
    with pytest.raises(ConfigError, match="decoder.n_head"):
        config.replace(decoder={"n_kv_head": 3})
    with pytest.raises(ConfigError, match="unknown decoder config fields"):
        ModelConfig.from_dict({"decoder": {"n_layers": 2}})
    with pytest.raises(KeyError, match="tiny-random"):
        ModelConfig.from_name("no-such-model")


def test_resolve_dtype() -> None:
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("bf16", "cuda") == torch.bfloat16
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if fast_on(dtype, "cpu"):  # a CPU with the units (AMX / AVX512-BF16 / -FP16) keeps it
            assert resolve_dtype(name, "cpu") == dtype
        else:
            with pytest.warns(UserWarning, match="float32"):
                assert resolve_dtype(name, "cpu") == torch.float32
    with pytest.raises(ConfigError, match="int8"):
        resolve_dtype("int8")


# --- encoder and projector ------------------------------------------------------------------

def test_encoder_batched_equals_single_and_ignores_padding(model) -> None:
    lens = [37, 120, 64, 1]
    features, feature_lens = random_features(lens, n_mels=128, seed=3)
    noisy = features + 5.0 * (features == 0)  # garbage after every clip's lookahead frames
    with torch.no_grad():
        batched = model.embed_audio(noisy, feature_lens)
        for row, length in enumerate(lens):
            one = features[row : row + 1, :, : length + 2]
            alone = model.embed_audio(one, feature_lens[row : row + 1])
            n_tokens = ((length - 1) // 2 + 1) // 2
            assert batched[row].shape == alone[0].shape == (n_tokens, 64)
            torch.testing.assert_close(batched[row], alone[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("cutoff", "length", "seen", "unseen"), [
    ("lookahead", 41, 42, 43),  # Qwen2-Audio: frames L and L + 1 reach the conv stem
    ("lookahead", 40, 40, 41),  # even L: only frame L reaches a valid output
    ("pairs", 41, 41, 42),  # v1: frames < 2n = L + 1 for odd L
    ("pairs", 40, 39, 40),  # v1: frames < 2n = L for even L
])
def test_frame_cutoff(cutoff: str, length: int, seen: int, unseen: int) -> None:
    config = ModelConfig.from_name("tiny-random", encoder={"frame_cutoff": cutoff, "n_layer": 1})
    encoder = random_model(config, seed=2).encoder
    features, lens = random_features([length], n_mels=128, seed=4)
    base = encoder(features, lens)[0]

    def with_frame_changed(frame: int) -> torch.Tensor:
        changed = features.clone()
        changed[:, :, frame] += 1.0
        return encoder(changed, lens)[0]

    with torch.no_grad():
        assert not torch.equal(with_frame_changed(seen), base)
        if unseen < features.shape[-1]:
            assert torch.equal(with_frame_changed(unseen), base)


def test_encoder_rejects_bad_inputs(model) -> None:
    features, lens = random_features([10], n_mels=128)
    with pytest.raises(ValueError, match="needs 12"):
        model.encoder(features[:, :, :11], lens)
    with pytest.raises(ValueError, match="features"):
        model.encoder(features[:, :80], lens)
    long, long_lens = random_features([3001], n_mels=128)
    with pytest.raises(ValueError, match="split long audio"):
        model.encoder(long, long_lens)


def test_v1_projector_frames_each_clip_with_learned_rows(v1_model) -> None:
    features, lens = random_features([50, 23], n_mels=80, seed=5)
    with torch.no_grad():
        rows = v1_model.embed_audio(features, lens)
    bos, eos = v1_model.projector.audio_bos_eos
    for clip, length in zip(rows, [50, 23]):
        assert clip.shape[0] == ((length - 1) // 2 + 1) // 2 + 2
        assert torch.equal(clip[0], bos) and torch.equal(clip[-1], eos)


# --- splicing and loss ----------------------------------------------------------------------

def test_embed_prompt_writes_rows_into_slots_in_order(model) -> None:
    ids = torch.tensor([[1, 7, 7, 2, 7], [7, 3, 4, 5, 6]])
    slots = ids == 7
    rows = torch.arange(4 * 64, dtype=torch.float32).view(4, 64)
    embeds = model.embed_prompt(ids, [rows[:3], rows[3:]], slots)
    assert torch.equal(embeds[slots], rows)
    assert torch.equal(embeds[~slots], model.decoder.embed(ids)[~slots])
    with pytest.raises(ValueError, match="4 audio slots but 3 audio rows"):
        model.embed_prompt(ids, rows[:3], slots)


def test_loss_is_shifted_cross_entropy_over_labelled_positions(model) -> None:
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
    logp = out.logits.log_softmax(-1)
    expected = -logp[:, 3:8].gather(-1, ids[:, 4:, None]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_target_only_logits_give_the_same_loss_and_gradients(model) -> None:
    """output="targets" (lm_head only where a label follows) = the full-logits loss: same
    logits rows, loss and gradient, with audio, right padding and a row without targets."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 400, (3, 12), generator=gen)
    ids[0, 2:4] = ids[1, 1] = 500  # audio slots: 2 + 1 rows for clips of 8 and 5 frames
    labels = ids.clone()
    labels[:, :6] = -100
    labels[1, 9:] = -100  # right padding
    labels[2] = -100  # a row with nothing to learn
    token_mask = torch.ones_like(ids, dtype=torch.bool)
    token_mask[1, 9:] = False
    features, feature_lens = random_features([8, 5], model.config.encoder.n_mels, seed=2)
    inputs = {"ids": ids, "features": features, "feature_lens": feature_lens,
              "audio_slot_mask": ids == 500, "token_mask": token_mask, "labels": labels}
    runs = {}
    for kind in ("logits", "targets"):
        model.zero_grad()
        out = model(**inputs, output=kind)
        out.loss.backward()
        runs[kind] = out, {n: p.grad.clone() for n, p in model.named_parameters()}
    (full, full_grads), (targets, target_grads) = runs["logits"], runs["targets"]
    keep = labels[:, 1:] != -100
    assert targets.logits.shape == (int(keep.sum()), model.config.decoder.vocab_size)
    torch.testing.assert_close(targets.logits, full.logits[:, :-1][keep], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(targets.loss, full.loss, rtol=1e-6, atol=1e-7)
    for name, grad in full_grads.items():
        torch.testing.assert_close(target_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="needs labels"):
        model(ids, output="targets")
    with pytest.raises(ValueError, match="a loss needs"):
        model(ids, labels=labels, output="last_logits")


def test_freeze_switches(model) -> None:
    fresh = random_model("tiny-random")
    fresh.freeze_encoder()
    assert not any(p.requires_grad for p in fresh.encoder.parameters())
    assert all(p.requires_grad for p in fresh.decoder.parameters())
    fresh.set_trainable(encoder=True, decoder=False)
    assert all(p.requires_grad for p in fresh.encoder.parameters())
    assert not any(p.requires_grad for p in fresh.decoder.parameters())


# --- decoder: KV cache, left padding, dynamic NTK / logn -------------------------------------

def _greedy_with_cache(
    decoder, embeds, mask, steps: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Prefill + `steps` cached decode steps; returns each step's last logits and the tokens."""
    batch, seq, _ = embeds.shape
    decoder.setup_caches(batch, seq + steps)
    pos = positions_from_mask(mask)
    logits = [decoder(embeds, pos, mask, output="last_logits")]
    tokens = [logits[-1].argmax(-1)]
    next_pos = pos[:, -1:] + 1
    for _ in range(steps):
        logits.append(decoder(decoder.embed(tokens[-1][:, None]), next_pos, output="last_logits"))
        tokens.append(logits[-1].argmax(-1))
        next_pos = next_pos + 1
    decoder.clear_caches()
    return logits, torch.stack(tokens, 1)


def test_kv_cache_decoding_equals_recompute(model) -> None:
    decoder = model.decoder
    ids = torch.randint(0, 512, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        everything = torch.ones_like(ids).bool()
        cached, tokens = _greedy_with_cache(decoder, decoder.embed(ids), everything, 4)
        full = torch.cat([ids, tokens[:, :-1]], 1)
        recomputed = decoder(decoder.embed(full), torch.arange(full.shape[1])[None])
    for step, logits in enumerate(cached):
        torch.testing.assert_close(logits[0], recomputed[0, 10 + step], rtol=0, atol=2e-6)


def test_left_padded_batch_with_cache_equals_each_row_alone(model) -> None:
    decoder = model.decoder
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 512, (n,), generator=gen) for n in (3, 12, 7)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows])
    with torch.no_grad():
        batched, batch_tokens = _greedy_with_cache(decoder, decoder.embed(ids), mask, 5)
        for i, row in enumerate(rows):
            everything = torch.ones(1, len(row)).bool()
            alone, tokens = _greedy_with_cache(decoder, decoder.embed(row[None]), everything, 5)
            assert torch.equal(tokens[0], batch_tokens[i])
            for a, b in zip(alone, batched):
                torch.testing.assert_close(b[i], a[0], rtol=0, atol=2e-6)


def test_cache_overflow_and_batch_mismatch_raise(model) -> None:
    decoder = model.decoder
    decoder.setup_caches(batch_size=1, max_seq_len=4)
    try:
        with pytest.raises(ValueError, match="overflow"):
            decoder(torch.zeros(1, 5, 64), torch.arange(5)[None])
        with pytest.raises(ValueError, match="batch of 2"):
            decoder(torch.zeros(2, 1, 64), torch.zeros(2, 1, dtype=torch.long))
    finally:
        decoder.clear_caches()


def test_ntk_alpha_and_logn_factors() -> None:
    lens = torch.tensor([1, 2048, 2049, 2300, 4096, 4097])
    assert ntk_alpha(lens, 2048).tolist() == [1, 1, 3, 3, 3, 7]
    factors = logn_scale(torch.tensor([[0, 2047, 2048, 4095]]), 2048).flatten().tolist()
    assert factors[:2] == [1.0, 1.0]
    assert factors[2] == pytest.approx(math.log(2049) / math.log(2048))
    assert factors[3] == pytest.approx(math.log(4096) / math.log(2048))


def test_dynamic_ntk_and_logn_act_only_past_train_seq_len(v1_model) -> None:
    """tiny-random-v1 has train_seq_len 64: shorter prompts are bitwise unaffected."""
    plain = random_model(
        v1_model.config.replace(decoder={"dynamic_ntk": False, "logn_attn": False}), seed=1
    )
    ids = torch.randint(0, 512, (1, 90), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        short_v1, short_plain = v1_model(ids[:, :64]).logits, plain(ids[:, :64]).logits
        long_v1, long_plain = v1_model(ids).logits, plain(ids).logits
    assert torch.equal(short_v1, short_plain)
    assert not torch.allclose(long_v1[0, -1], long_plain[0, -1], rtol=0, atol=1e-6)


def test_ntk_alpha_is_fixed_at_prefill(v1_model) -> None:
    """A 60-token prefill keeps alpha 1 while decoding past 64; a 70-token recompute does not."""
    decoder = v1_model.decoder
    ids = torch.randint(0, 512, (1, 70), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        decoder.setup_caches(1, 70)
        decoder(decoder.embed(ids[:, :60]), torch.arange(60)[None], output="last_logits")
        for p in range(60, 70):
            step = decoder.embed(ids[:, p : p + 1])
            stepped = decoder(step, torch.tensor([[p]]), output="last_logits")
        assert decoder.cache is not None and decoder.cache.rope_base.tolist() == [10000.0]
        decoder.clear_caches()
        recomputed = decoder(decoder.embed(ids), torch.arange(70)[None], output="last_logits")
        no_ntk = random_model(v1_model.config.replace(decoder={"dynamic_ntk": False}), seed=1)
        expected = no_ntk.decoder(decoder.embed(ids), torch.arange(70)[None], output="last_logits")
    torch.testing.assert_close(stepped, expected, rtol=0, atol=2e-6)
    assert not torch.allclose(stepped, recomputed, rtol=0, atol=1e-6)
