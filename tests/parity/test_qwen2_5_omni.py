"""lalm vs transformers' Qwen2_5OmniThinkerForConditionalGeneration on a shrunken config.

The reference keeps every switch of the released thinker (windowed encoder, M-RoPE sections,
q/k/v bias, GQA, untied lm_head, vocab 152,064; `lalm.testing.family_checkpoints`). It is saved
in the published whole-model layout (thinker_config, `thinker.*` shards, talker / token2wav
tensors) with tokenizer files of the real Qwen BPE, and lalm loads that directory. Both get the
same ids (the real `<|audio_bos|><|AUDIO|>…<|audio_eos|>` ids) and the same log-mel features
(lalm's real-length front end; the reference masks the same frames).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from conftest import SHARED_FIXTURES

transformers = pytest.importorskip("transformers")

from lalm.audio import batch_log_mel  # noqa: E402
from lalm.checkpoint import load_model, save_model  # noqa: E402
from lalm.checkpoint.safetensors_io import read_checkpoint_dir, write_checkpoint_dir  # noqa: E402
from lalm.errors import CheckpointError  # noqa: E402
from lalm.generation.generate import left_pad  # noqa: E402
from lalm.model import AudioLanguageModel, positions_from_mask  # noqa: E402
from lalm.model.layers import mrope_cos_sin, rope_inv_freq  # noqa: E402
from lalm.testing.family_checkpoints import save_omni_checkpoint  # noqa: E402
from lalm.testing.models import (  # noqa: E402
    audio_span,
    greedy_tokens,
    random_text_ids as text_ids,
    relative_error,
    tone_clips,
)
from lalm.tokenizer import load_tokenizer  # noqa: E402

TOKENIZER_DIR = SHARED_FIXTURES / "qwen2_audio_tokenizer"
AUDIO, AUDIO_BOS, AUDIO_EOS = 151646, 151647, 151648
IM_START, IM_END, ENDOFTEXT, NEWLINE = 151644, 151645, 151643, 198
REL = 1e-5
NEW_TOKENS = 8

pytestmark = [
    pytest.mark.skipif(not TOKENIZER_DIR.is_dir(),
                       reason=f"shared tokenizer fixture missing: {TOKENIZER_DIR}"),
    pytest.mark.slow,  # building and saving the 152k-row reference takes ~30 s here
]


@pytest.fixture(scope="module")
def omni(tmp_path_factory) -> tuple[torch.nn.Module, AudioLanguageModel, Path]:
    directory = tmp_path_factory.mktemp("qwen2_5_omni")
    reference = save_omni_checkpoint(directory, TOKENIZER_DIR)
    return reference, load_model(directory), directory


def _features(seconds: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return batch_log_mel(tone_clips(seconds, seed), 128)


def _audio(model: AudioLanguageModel, length: int) -> list[int]:
    return audio_span(model, length, AUDIO_BOS, AUDIO, AUDIO_EOS)


def _reference_logits(reference, ids, mask, features, lens) -> torch.Tensor:
    frames = torch.arange(features.shape[2])[None, :] < lens[:, None]
    with torch.no_grad():
        return reference(input_ids=ids, attention_mask=mask.long(), input_features=features,
                         feature_attention_mask=frames.long()).logits


def _lalm_logits(model, ids, mask, features, lens) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, features, lens, ids == AUDIO, token_mask=mask).logits


def _reference_greedy(reference, ids, mask, features, lens) -> list[list[int]]:
    frames = torch.arange(features.shape[2])[None, :] < lens[:, None]
    with torch.no_grad():
        out = reference.generate(
            input_ids=ids, attention_mask=mask.long(), input_features=features,
            feature_attention_mask=frames.long(), max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, do_sample=False)
    return out[:, ids.shape[1]:].tolist()


def _lalm_greedy(model, ids, mask, features, lens) -> list[list[int]]:
    return greedy_tokens(model, ids, mask, features, lens, AUDIO, NEW_TOKENS)


def test_whole_release_loads_the_thinker_with_a_note(omni, caplog) -> None:
    reference, model, directory = omni
    assert (directory / "model.safetensors.index.json").is_file()
    with caplog.at_level(logging.INFO, logger="lalm.checkpoint.qwen2_5_omni"):
        again = load_model(directory)
    note = " ".join(r.getMessage() for r in caplog.records)
    assert "talker" in note and "token2wav" in note and "vision tower" in note
    cfg = again.config
    assert (cfg.encoder.n_window, cfg.decoder.mrope_section, cfg.decoder.qkv_bias,
            cfg.decoder.tie_embeddings) == (8, [2, 3, 3], True, False)
    expected = {k: v for k, v in reference.state_dict().items()}
    torch.testing.assert_close(again.decoder.lm_head.weight, expected["lm_head.weight"])
    torch.testing.assert_close(again.projector.proj.weight,
                               expected["model.audio_tower.proj.weight"])


def test_tokenizer_files_carry_the_family_ids(omni) -> None:
    _, _, directory = omni
    tokenizer = load_tokenizer(directory)
    for token, expected in (("<|AUDIO|>", AUDIO), ("<|audio_bos|>", AUDIO_BOS),
                            ("<|audio_eos|>", AUDIO_EOS), ("<|im_start|>", IM_START),
                            ("<|im_end|>", IM_END), ("<|IMAGE|>", 151655), ("<|VIDEO|>", 151656)):
        assert tokenizer.token_id(token) == expected
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    text = "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>Hello, world!<|im_end|>"
    assert tokenizer.encode(text) == hf(text)["input_ids"]
    assert tokenizer.encode("Hello, world!") == [9707, 11, 1879, 0]  # real Qwen BPE ranks


def test_encoder_rows_equal_reference(omni) -> None:
    """Clips of one chunk, several chunks and a partial last chunk, batched."""
    reference, model, _ = omni
    features, lens = _features([0.05, 0.16, 0.43, 1.0], seed=0)
    frames = torch.arange(features.shape[2])[None, :] < lens[:, None]
    with torch.no_grad():
        expected = reference.model.get_audio_features(
            features, frames.long(), return_dict=True).last_hidden_state
        rows = model.embed_audio(features, lens)
    assert [r.shape[0] for r in rows] == model.audio_row_counts(lens).tolist()
    assert relative_error(torch.cat(rows), expected) <= REL


def test_single_prompt_last_logits(omni) -> None:
    reference, model, _ = omni
    features, lens = _features([0.7], seed=1)
    row = [IM_START, *text_ids(5, 0), *_audio(model, int(lens[0])), *text_ids(7, 1)]
    ids, mask = left_pad([row], ENDOFTEXT)
    expected = _reference_logits(reference, ids, mask, features, lens)
    ours = _lalm_logits(model, ids, mask, features, lens)
    assert relative_error(ours[:, -1], expected[:, -1]) <= REL
    assert relative_error(ours, expected) <= REL


def test_several_audios_in_one_prompt(omni) -> None:
    reference, model, _ = omni
    features, lens = _features([0.45, 0.2, 0.33], seed=2)
    row = [*text_ids(3, 2)]
    for i, length in enumerate(lens.tolist()):
        row += [*_audio(model, length), *text_ids(2 + i, 3 + i)]
    ids, mask = left_pad([row], ENDOFTEXT)
    expected = _reference_logits(reference, ids, mask, features, lens)
    assert relative_error(_lalm_logits(model, ids, mask, features, lens)[:, -1],
                          expected[:, -1]) <= REL


def test_left_padded_batch_logits_equal_reference_and_alone(omni) -> None:
    reference, model, _ = omni
    features, lens = _features([0.3, 0.9, 0.55], seed=3)
    rows = [[*text_ids(3 + 4 * i, i), *_audio(model, length), *text_ids(2 + i, 10 + i)]
            for i, length in enumerate(lens.tolist())]
    ids, mask = left_pad(rows, ENDOFTEXT)
    ours = _lalm_logits(model, ids, mask, features, lens)
    theirs = _reference_logits(reference, ids, mask, features, lens)
    for i, length in enumerate(lens.tolist()):
        assert relative_error(ours[i][mask[i]], theirs[i][mask[i]]) <= REL
        alone = _lalm_logits(model, torch.tensor([rows[i]]), torch.ones(1, len(rows[i]),
                             dtype=torch.bool), features[i:i + 1, :, :length + 2], lens[i:i + 1])
        assert relative_error(ours[i][mask[i]], alone[0]) <= 1e-6


def test_greedy_tokens_match_reference_and_depend_on_the_audio(omni) -> None:
    """Single prompt, several audios in one prompt, and a left-padded batch of three."""
    reference, model, _ = omni
    features, lens = _features([0.4, 0.8, 0.25], seed=4)
    prompt = text_ids(4, 20)
    rows = [[*prompt, *_audio(model, length), IM_END, NEWLINE] for length in lens.tolist()]
    ids, mask = left_pad(rows, ENDOFTEXT)
    ours = _lalm_greedy(model, ids, mask, features, lens)
    assert ours == _reference_greedy(reference, ids, mask, features, lens)
    single = _lalm_greedy(model, torch.tensor([rows[0]]), torch.ones(1, len(rows[0]),
                          dtype=torch.bool), features[:1, :, :int(lens[0]) + 2], lens[:1])
    assert single == ours[:1]
    # random weights that say nothing would make this comparison empty: the outputs vary
    # along each sequence and with the audio
    assert all(len(set(tokens)) > 1 for tokens in ours)
    assert len({tuple(tokens) for tokens in ours}) == 3
    several = [*prompt]
    for i, length in enumerate(lens.tolist()):
        several += [*_audio(model, length), *text_ids(2, 30 + i)]
    ids, mask = left_pad([several], ENDOFTEXT)
    assert _lalm_greedy(model, ids, mask, features, lens) == _reference_greedy(
        reference, ids, mask, features, lens)


def test_audio_positions_of_get_rope_index_are_1d(omni) -> None:
    """The reference's M-RoPE index of a text + audio prompt (its audio branch runs only when a
    vision grid is given; an empty one here) equals lalm's 1-D positions on all three rows."""
    reference, model, _ = omni
    features, lens = _features([0.5, 0.3], seed=5)
    row = [*text_ids(3, 40), *_audio(model, int(lens[0])), *text_ids(2, 41),
           *_audio(model, int(lens[1])), *text_ids(4, 42)]
    ids, mask = left_pad([row, [*text_ids(1, 43), *_audio(model, int(lens[1])), *text_ids(4, 44)]],
                         ENDOFTEXT)
    audio_lens = torch.cat([lens, lens[1:]])
    with torch.no_grad():
        positions, _ = reference.model.get_rope_index(
            ids, image_grid_thw=torch.zeros(0, 3, dtype=torch.int64), attention_mask=mask.long(),
            audio_seqlens=audio_lens)
    expected = positions_from_mask(mask)
    for r in range(3):
        assert torch.equal(positions[r][mask], expected[mask])


def test_mrope_tables_equal_reference_rotary_with_distinct_rows(omni) -> None:
    reference, model, _ = omni
    rotary = reference.model.language_model.rotary_emb
    pos = torch.stack([torch.arange(6), torch.arange(6) * 2, torch.arange(6) + 5])[:, None]
    x = torch.zeros(1, 6, 64)
    cos, sin = rotary(x, pos)
    head_dim = model.config.decoder.head_dim
    inv_freq = rope_inv_freq(head_dim, torch.tensor([model.config.decoder.rope_theta]))
    ours_cos, ours_sin = mrope_cos_sin(pos, inv_freq, model.config.decoder.mrope_section,
                                       torch.float32)
    torch.testing.assert_close(ours_cos[:, 0], cos)
    torch.testing.assert_close(ours_sin[:, 0], sin)


def test_lalm_save_loads_in_transformers_with_the_same_logits(omni, tmp_path) -> None:
    _, model, _ = omni
    save_model(model, tmp_path, max_shard_bytes=20_000_000)
    again = transformers.Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        tmp_path).eval()
    features, lens = _features([0.6], seed=6)
    row = [*text_ids(3, 50), *_audio(model, int(lens[0])), *text_ids(2, 51)]
    ids, mask = left_pad([row], ENDOFTEXT)
    assert relative_error(_reference_logits(again, ids, mask, features, lens),
                          _lalm_logits(model, ids, mask, features, lens)) <= REL
    reloaded = load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_unknown_key_is_refused(omni, tmp_path) -> None:
    _, model, _ = omni
    save_model(model, tmp_path)
    state = read_checkpoint_dir(tmp_path)
    state["audio_tower.layers.0.self_attn.rotary.weight"] = torch.zeros(2)
    (tmp_path / "model.safetensors").unlink()
    write_checkpoint_dir({k: v.clone() for k, v in state.items()}, tmp_path)
    with pytest.raises(CheckpointError, match="rotary"):
        load_model(tmp_path)
