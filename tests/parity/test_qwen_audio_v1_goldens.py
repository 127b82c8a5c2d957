"""Qwen-Audio (v1) parity with the official reference code, in float32.

`../shared/fixtures/qwen_audio_v1_tiny_A/` holds a tiny random checkpoint in the published v1
layout and goldens the reference produced from it (its README documents every file and quirk).
Everything here goes through lalm's own path: `load_model` on the directory as published,
`lalm.audio` from the decoded waveforms, `lalm.prompt` + `lalm.tokenizer` for the ids,
`lalm.generation` for greedy decoding over the KV cache (each step's scores are checked under
teacher forcing, one uncached forward over prompt + generated tokens).

Tolerances (README section 5): mel and encoder rows 1e-5 absolute; logits, hidden states and
top-5 scores 1e-4 relative to the largest magnitude of the golden tensor; loss 1e-5 relative.

One documented difference is kept on purpose (README 4.5): when the reference encodes several
clips together (a two-audio chat, a padded batch), a shorter clip's conv stem sees the next
mel frames of its 30 s padding instead of zeros, which perturbs that clip's rows (up to 1.1e-3
for b.wav in the batch). lalm encodes every clip as it is encoded alone ("batched = single"),
so its rows equal the single-clip goldens `enc_*`, and joint goldens are compared only where
the reference's joint encode equals its single one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_fixture
from torch import Tensor

from lalm.audio import N_SAMPLES, audio_token_count, batch_log_mel, log_mel_spectrogram
from lalm.checkpoint import load_model
from lalm.generation import GenerationOptions, PromptBatch, generate, left_pad
from lalm.model import AudioLanguageModel, TextDecoder, positions_from_mask
from lalm.model.layers import ntk_alpha, ntk_rope_base
from lalm.prompt import QWEN_AUDIO, Prompt, PromptIds
from lalm.tokenizer import Tokenizer, load_tokenizer

PROMPTS = ["asr", "s2tt", "aac", "srwt", "aqa", "chat"]
CLIPS = ["a", "b", "c"]
N_MELS = 80
REL = 1e-4  # logits / hidden states / scores, relative to the golden's largest magnitude
STEPS = 12  # greedy tokens in every golden generation


def assert_rel(actual: Tensor, expected: np.ndarray | Tensor, rel: float = REL) -> None:
    """max |actual - expected| <= rel * max |expected|."""
    expected = torch.as_tensor(expected)
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * scale)


# --- fixture data (read once per module) ----------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    return shared_fixture("qwen_audio_v1_tiny_A")


@pytest.fixture(scope="module")
def goldens(fixture_dir: Path) -> dict[str, np.lib.npyio.NpzFile]:
    folder = fixture_dir / "goldens"
    names = ["audio_features", "audio_encoder", "logits", "generation", "long_context"]
    return {name: np.load(folder / f"{name}.npz") for name in names}


@pytest.fixture(scope="module")
def summary(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "goldens" / "goldens.json").read_text())


@pytest.fixture(scope="module")
def records(fixture_dir: Path) -> dict[str, dict]:
    prompts = json.loads((fixture_dir / "goldens" / "prompts.json").read_text())
    return {r["name"]: r for r in prompts}


@pytest.fixture(scope="module")
def model(fixture_dir: Path) -> AudioLanguageModel:
    return load_model(fixture_dir, dtype="fp32")


@pytest.fixture(scope="module")
def tokenizer(fixture_dir: Path) -> Tokenizer:
    return load_tokenizer(fixture_dir)


@pytest.fixture(scope="module")
def waves(goldens) -> dict[str, np.ndarray]:
    """The reference's decoded waveforms (ffmpeg's resampler is not reproduced: start from its
    output), cut to the 30 s the v1 reference keeps; the pipeline splits longer audio."""
    return {c: goldens["audio_features"][f"waveform_{c}"][:N_SAMPLES] for c in CLIPS}


@pytest.fixture(scope="module")
def encoded(model, waves) -> dict[str, tuple[Tensor, Tensor]]:
    """Per clip, encoded alone: (encoder output [n, D_enc], audio rows [N + 2, D])."""
    out = {}
    for clip in CLIPS:
        features, lens = batch_log_mel([waves[clip]], N_MELS)
        x, x_lens = model.encoder(features, lens)
        out[clip] = (x[0, : int(x_lens[0])], model.projector(x, x_lens)[0])
    return out


@pytest.fixture(scope="module")
def prompt_ids(records, tokenizer, waves) -> dict[str, PromptIds]:
    """Each golden prompt text through lalm.prompt + lalm.tokenizer, audio counts from the
    clips' real mel lengths."""
    out = {}
    for name, record in records.items():
        prompt = Prompt.from_text(record["text"], QWEN_AUDIO)
        counts = [audio_token_count(waves[Path(a.source).stem].shape[0] // 160)
                  for a in prompt.audios]
        out[name] = prompt.encode(tokenizer, counts)
    return out


def _embeds(model, tokenizer, ids: Tensor, clips: list[Tensor]) -> Tensor:
    slots = torch.isin(ids, torch.tensor(sorted(tokenizer.audio_slot_ids)))
    return model.embed_prompt(ids, clips, slots)


@pytest.fixture(scope="module")
def prompt_embeds(model, tokenizer, prompt_ids, records, encoded) -> dict[str, Tensor]:
    """[1, T, D] decoder input of every prompt, each clip's rows as encoded alone."""
    return {
        name: _embeds(model, tokenizer, torch.tensor([prompt_ids[name].ids]),
                      [encoded[Path(u).stem][1] for u in records[name]["audio_urls"]])
        for name in PROMPTS
    }


@pytest.fixture(scope="module")
def hidden(model, prompt_embeds) -> dict[str, Tensor]:
    """[T, D] final hidden states (after the last RMSNorm) of every prompt."""
    return {name: _hidden(model.decoder, e) for name, e in prompt_embeds.items()}


def _hidden(decoder: TextDecoder, embeds: Tensor) -> Tensor:
    positions = torch.arange(embeds.shape[1])[None]
    return decoder(embeds, positions, output="hidden")[0]


@pytest.fixture(scope="module")
def plain_decoder(model) -> TextDecoder:
    """The same decoder weights with dynamic NTK and logn attention turned off."""
    config = model.config.replace(decoder={"dynamic_ntk": False, "logn_attn": False}).decoder
    with torch.device("meta"):
        decoder = TextDecoder(config)
    decoder.load_state_dict(model.decoder.state_dict(), assign=True)
    return decoder.eval()


# --- checkpoint ------------------------------------------------------------------------------

def test_checkpoint_loads_bitwise_and_round_trips_to_v1_names(model, fixture_dir) -> None:
    """v1 file -> lalm -> v1 names: every tensor equals the float16 file value upcast."""
    from lalm.checkpoint import qwen_audio_v1
    from lalm.checkpoint.safetensors_io import read_checkpoint_dir

    original = read_checkpoint_dir(fixture_dir)
    back = qwen_audio_v1.from_lalm(model.state_dict())
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k].float()) for k in original)


def test_vocab_rows_exceed_the_tokenizer(model, tokenizer, summary) -> None:
    """155,947 embedding rows, 155,165 ids: the model may pick a padding row; it decodes to a
    placeholder instead of failing."""
    assert model.decoder.embed.weight.shape[0] == 155947 and len(tokenizer) == 155165
    aqa = summary["generation_single"]["aqa"]
    assert aqa["ids_outside_tokenizer_vocab"] == [155677]
    assert tokenizer.decode(aqa["new_ids"]) == aqa["decoded_new_text"]


# --- audio: mel features and encoder ---------------------------------------------------------

@pytest.mark.parametrize("clip", CLIPS)
def test_mel_features(clip: str, waves, goldens, summary) -> None:
    golden = torch.from_numpy(goldens["audio_features"][f"mel_{clip}"])  # [80, 3000] padded
    mel = log_mel_spectrogram(waves[clip], N_MELS)
    length = mel.shape[1]
    assert length == summary["audio"][clip]["mel_len"]
    # fp32 FFT round-off differs between CPUs: up to 6.2e-5 from these goldens on one AVX-512
    # machine, where a float64 computation is itself 1.9e-5 from them (test_logmel_parity.py)
    torch.testing.assert_close(mel, golden[:, :length], rtol=0, atol=1e-4)
    # the two lookahead frames the conv stem may read are the padded reference's frames
    features, _ = batch_log_mel([waves[clip]], N_MELS)
    ahead = golden[:, length : length + 2]
    torch.testing.assert_close(features[0, :, length : length + ahead.shape[1]], ahead,
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("clip", CLIPS)
def test_encoder_rows_with_bos_eos(clip: str, encoded, goldens) -> None:
    blocks_out, rows = encoded[clip]
    golden = goldens["audio_encoder"]
    torch.testing.assert_close(blocks_out, torch.from_numpy(golden[f"enc_{clip}_blocks_out"]),
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(rows, torch.from_numpy(golden[f"enc_{clip}"]), rtol=0, atol=1e-5)


def test_joint_goldens_where_the_reference_equals_single(encoded, goldens) -> None:
    golden = goldens["audio_encoder"]
    # single-audio prompts, and the longest clip of a joint encode, see no other clip's frames
    same = {"asr_audio0": "a", "s2tt_audio0": "c", "aac_audio0": "b", "srwt_audio0": "a",
            "aqa_audio0": "b", "chat_audio1": "b", "batch_audio2": "c"}
    for key, clip in same.items():
        torch.testing.assert_close(encoded[clip][1], torch.from_numpy(golden[f"joint_{key}"]),
                                   rtol=0, atol=1e-5, msg=key)


def test_batched_encode_equals_single(model, waves, encoded, goldens) -> None:
    """lalm: each clip of a batch gets its single rows. The reference's joint encode of the same
    batch moves b.wav's rows by 1.1e-3 (README 4.5); lalm does not reproduce that."""
    features, lens = batch_log_mel([waves[c] for c in CLIPS], N_MELS)
    for clip, rows in zip(CLIPS, model.embed_audio(features, lens), strict=True):
        torch.testing.assert_close(rows, encoded[clip][1], rtol=0, atol=1e-6)
    quirk = goldens["audio_encoder"]["joint_batch_audio1"] - goldens["audio_encoder"]["enc_b"]
    assert np.abs(quirk).max() > 1e-3


# --- prompt ids, decoder, logits, loss --------------------------------------------------------

@pytest.mark.parametrize("name", PROMPTS)
def test_token_ids_after_audio_expansion(name: str, prompt_ids, records) -> None:
    record = records[name]
    assert prompt_ids[name].ids == record["ids"]
    spans = [[start, end - 1] for start, end in prompt_ids[name].audio_spans]
    assert spans == record["audio_positions"]


@pytest.mark.parametrize("name", PROMPTS)
def test_decoder_from_reference_embeddings(name: str, model, goldens) -> None:
    """The reference's own LLM input (joint encode included) through lalm's decoder."""
    logits = goldens["logits"]
    embeds = torch.from_numpy(logits[f"{name}_embeddings_with_audio"])[None]
    assert_rel(_hidden(model.decoder, embeds), logits[f"{name}_final_hidden"], rel=1e-5)


@pytest.mark.parametrize("name", PROMPTS)
def test_embeddings_hidden_states_and_logits(name: str, model, prompt_embeds, hidden,
                                             goldens) -> None:
    logits = goldens["logits"]
    # chat's a.wav rows differ by up to 5e-6 through the reference's joint encode (README 4.5)
    atol = 1e-5 if name == "chat" else 1e-6
    torch.testing.assert_close(prompt_embeds[name][0],
                               torch.from_numpy(logits[f"{name}_embeddings_with_audio"]),
                               rtol=0, atol=atol)
    h = hidden[name]
    assert_rel(h, logits[f"{name}_final_hidden"])
    positions = torch.from_numpy(logits[f"{name}_positions"])
    assert_rel(model.decoder.lm_head(h[positions]), logits[f"{name}_position_logits"])
    assert_rel(model.decoder.lm_head(h[-1]), logits[f"{name}_last_logits"])


def test_ntk_and_logn_change_nothing_within_seq_length(model, plain_decoder, prompt_embeds,
                                                     summary) -> None:
    """Every prompt (<= 770 tokens) gives bitwise the same logits with both features off, as
    the reference records (`ntk_logn_disabled_last_logits_maxabs_diff` = 0.0)."""
    for name, embeds in prompt_embeds.items():
        assert summary["ntk_logn_disabled_last_logits_maxabs_diff"][name] == 0.0
        positions = torch.arange(embeds.shape[1])[None]
        assert torch.equal(plain_decoder(embeds, positions, output="last_logits"),
                           model.decoder(embeds, positions, output="last_logits"))


def test_loss(model, tokenizer, prompt_ids, waves, summary) -> None:
    golden = summary["loss"]
    ids = prompt_ids["asr"].ids + tokenizer.encode(golden["target_text"])
    assert ids == golden["input_ids"]
    labels = torch.tensor([[-100] * len(prompt_ids["asr"].ids) + golden["target_ids"]])
    assert labels.tolist() == [golden["labels"]]
    ids_t = torch.tensor([ids])
    features, lens = batch_log_mel([waves["a"]], N_MELS)
    slots = torch.isin(ids_t, torch.tensor(sorted(tokenizer.audio_slot_ids)))
    loss = model(ids_t, features, lens, slots, labels=labels).loss
    assert loss.item() == pytest.approx(11.8867416, rel=1e-5)
    assert loss.item() == pytest.approx(golden["loss"], rel=1e-5)


# --- greedy generation ------------------------------------------------------------------------

def greedy(model: AudioLanguageModel, ids: Tensor, token_mask: Tensor, embeds: Tensor,
           stop_ids: tuple[int, ...]) -> Tensor:
    """`lalm.generation.generate` with the reference's settings (evaluation scripts): greedy,
    12 new tokens, min_new_tokens=1, no repetition penalty. lalm bans every stop id at step 0
    where the reference bans only 151643; no golden step-0 top-5 holds another stop id.

    Returns:
        [B, 12] int64 new ids (no golden row stops early).
    """
    options = GenerationOptions(max_new_tokens=STEPS, min_new_tokens=1)
    results = generate(model, PromptBatch(ids, token_mask, embeds), options, stop_ids)
    assert all(r.finish_reason == "length" for r in results)
    return torch.tensor([r.tokens for r in results])


def teacher_forced_top5(decoder: TextDecoder, embeds: Tensor, token_mask: Tensor,
                        new_ids: Tensor, eod: int) -> Tensor:
    """Scores of every generation step in one uncached forward over prompt + new tokens.

    Args:
        embeds: [B, S, D] prompt embeddings; token_mask: [B, S] bool.
        new_ids: [B, n] the generated tokens (the last one is never fed).

    Returns:
        [n, B, 5] top-5 scores per step, id `eod` banned at step 0 as the reference does.
    """
    fed = new_ids[:, :-1]
    embeds = torch.cat([embeds, decoder.embed(fed)], dim=1)
    mask = torch.cat([token_mask, torch.ones_like(fed, dtype=torch.bool)], dim=1)
    hidden = decoder(embeds, positions_from_mask(mask), mask, output="hidden")
    logits = decoder.lm_head(hidden[:, -new_ids.shape[1]:]).transpose(0, 1)  # [n, B, V]
    logits[0, :, eod] = float("-inf")
    return logits.topk(5).values


def _check_margins(margins: list[float]) -> None:
    """Exact id comparison is sound only where no top-1/top-2 gap is a float-noise tie
    (README 5: a gap under ~1e-4 would be compared under teacher forcing only)."""
    assert min(margins) > 1e-4


@pytest.mark.parametrize("name", PROMPTS)
def test_greedy_generation(name: str, model, tokenizer, prompt_ids, prompt_embeds, summary,
                           goldens) -> None:
    golden = summary["generation_single"][name]
    _check_margins(golden["top1_top2_margin_per_step"])
    # the chat stops on <|im_end|> / <|im_start|> as model.chat does (none comes within 12)
    stops = tokenizer.stop_ids if name == "chat" else (tokenizer.eod_id,)
    ids = torch.tensor([prompt_ids[name].ids])
    embeds = prompt_embeds[name]
    mask = torch.ones_like(ids, dtype=torch.bool)
    new = greedy(model, ids, mask, embeds, stops)
    assert new[0].tolist() == golden["new_ids"]
    top5 = teacher_forced_top5(model.decoder, embeds, mask, new, tokenizer.eod_id)
    assert_rel(top5[:, 0], goldens["generation"][f"{name}_step_top5_values"])


@pytest.mark.slow
def test_left_padded_batch(model, tokenizer, prompt_ids, waves, summary, goldens) -> None:
    """The evaluation scripts' batch: left padding with 151643; every row decodes as alone."""
    golden, arrays = summary["generation_batch"], goldens["generation"]
    ids, mask = left_pad([prompt_ids[name].ids for name in golden["prompts"]], tokenizer.eod_id)
    assert torch.equal(ids, torch.from_numpy(arrays["batch_input_ids"]))
    assert torch.equal(mask.long(), torch.from_numpy(arrays["batch_attention_mask"]))

    clips = [Path(r["audio_urls"][0]).stem for r in golden["audio_info"]]
    features, lens = batch_log_mel([waves[c] for c in clips], N_MELS)
    embeds = _embeds(model, tokenizer, ids, model.embed_audio(features, lens))
    new = greedy(model, ids, mask, embeds, (tokenizer.eod_id,))
    assert new.tolist() == golden["new_ids"]
    assert torch.equal(new, torch.from_numpy(arrays["batch_output_sequences"][:, ids.shape[1]:]))
    # the reference's batch moves aac's prefill logits by 1.2e-5 (its joint encode); lalm's
    # rows equal the single prompts, within the tolerance of both
    prefill = model.decoder(embeds, positions_from_mask(mask), mask, output="last_logits")
    assert_rel(prefill, arrays["batch_prefill_last_logits"])
    top5 = teacher_forced_top5(model.decoder, embeds, mask, new, tokenizer.eod_id)
    for row, name in enumerate(golden["prompts"]):
        assert_rel(top5[:, row], arrays["batch_step_top5_values"][:, row])
        assert_rel(top5[:, row], arrays[f"{name}_step_top5_values"])


# --- long context: dynamic NTK and logn attention past seq_length ---------------------------

@pytest.mark.slow
def test_long_context_prefill(model, plain_decoder, goldens, summary) -> None:
    """2300 text tokens: alpha 3 and logn factors > 1; both change the logits by ~2e-4."""
    golden = goldens["long_context"]
    ids = torch.from_numpy(golden["long_input_ids"])[None]
    assert ntk_alpha(torch.tensor([ids.shape[1]]), 2048).tolist() == \
        summary["long_context"]["ntk_alpha_used_in_prefill"]
    embeds = model.decoder.embed(ids)
    h = _hidden(model.decoder, embeds)
    assert_rel(h, golden["long_final_hidden"])
    positions = torch.from_numpy(golden["long_positions"])
    assert_rel(model.decoder.lm_head(h[positions]), golden["long_position_logits"])
    last = model.decoder.lm_head(h[-1])
    assert_rel(last, golden["long_last_logits"])
    # without the two features the logits move as much as the reference says, which is more
    # than the tolerance: this comparison would fail without them
    off = plain_decoder(embeds, torch.arange(ids.shape[1])[None], output="last_logits")[0]
    moved = float((off - last).abs().max())
    expected = summary["long_context"]["last_logits_maxabs_diff_if_ntk_and_logn_disabled"]
    assert moved == pytest.approx(expected, rel=0.05)
    assert moved > REL * float(np.abs(golden["long_last_logits"]).max())


@pytest.mark.slow
def test_long_context_decoding_keeps_the_prefill_alpha(model, tokenizer, goldens,
                                                       summary) -> None:
    """A 2040-token prefill (alpha 1) decoding across position 2048 keeps alpha 1; a model that
    recomputed alpha from the grown length (3 at 2049+) would miss the last step's scores."""
    golden, expected = goldens["long_context"], summary["long_context"]
    _check_margins(expected["generation_top1_top2_margin_per_step"])
    prefix = torch.from_numpy(golden["long_input_ids"][:2040])[None]
    decoder = model.decoder
    mask = torch.ones_like(prefix, dtype=torch.bool)
    new = greedy(model, prefix, mask, decoder.embed(prefix), (tokenizer.eod_id,))
    assert new[0].tolist() == expected["generation_new_ids"]
    # every step's scores through the KV cache, as the reference decodes
    sequence = torch.cat([prefix, new[:, :-1]], dim=1)  # 2051 tokens
    decoder.setup_caches(1, sequence.shape[1])
    try:
        step_logits = [decoder(decoder.embed(prefix), torch.arange(2040)[None],
                               output="last_logits")]
        for p in range(2040, sequence.shape[1]):
            step_logits.append(decoder(decoder.embed(sequence[:, p : p + 1]),
                                       torch.tensor([[p]]), output="last_logits"))
        assert torch.equal(decoder.cache.rope_base, ntk_rope_base(10000.0, torch.ones(1), 8))
    finally:
        decoder.clear_caches()
    scores = torch.cat(step_logits)  # [12, V]
    scores[0, tokenizer.eod_id] = float("-inf")
    assert_rel(scores.topk(5).values, golden["long_gen_step_top5_values"])
    last = torch.from_numpy(golden["long_gen_last_step_scores"])
    torch.testing.assert_close(scores[-1], last, rtol=0, atol=1e-6)
    recomputed = decoder(decoder.embed(sequence), torch.arange(sequence.shape[1])[None],
                         output="last_logits")[0]
    assert float((recomputed - last).abs().max()) > 1e-4
