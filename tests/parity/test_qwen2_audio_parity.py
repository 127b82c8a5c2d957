"""lalm vs transformers' Qwen2AudioForConditionalGeneration on shrunken configs.

The reference model keeps every quirk of the released one (vocab 156,032, untied lm_head,
n_kv_head == n_head; plus a GQA variant), gets random weights, is saved by transformers with
`save_pretrained`, and lalm loads that directory through its own converter. The reference
encodes 30 s padded features; lalm gets each clip's real length plus the 2 lookahead frames
(the contract's layout, sliced from the reference's padded features, which the contract says
are equal), so these tests also prove the real-length encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from lalm.checkpoint import load_model, save_model  # noqa: E402
from lalm.model import AudioLanguageModel, positions_from_mask  # noqa: E402
from lalm.testing.models import randomize_  # noqa: E402

AUDIO, AUDIO_BOS, AUDIO_EOS = 151646, 151647, 151648
IM_START, IM_END, NEWLINE = 151644, 151645, 198
VOCAB = 156032
REL = 1e-5


def _reference(directory: Path, n_kv_head: int) -> torch.nn.Module:
    config = transformers.Qwen2AudioConfig(
        audio_config={"d_model": 32, "encoder_attention_heads": 4, "encoder_ffn_dim": 64,
                      "encoder_layers": 2, "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": VOCAB, "hidden_size": 64,
                     "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": n_kv_head, "rms_norm_eps": 1e-5,
                     "max_position_embeddings": 8192, "tie_word_embeddings": False},
    )
    model = transformers.Qwen2AudioForConditionalGeneration(config)
    randomize_(model, seed=n_kv_head, std=0.1)
    model.save_pretrained(directory)
    return model.eval()


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Builds (once per module) the reference and lalm's load of it, by attention kind."""
    built: dict[str, tuple[torch.nn.Module, AudioLanguageModel]] = {}

    def get(kind: str) -> tuple[torch.nn.Module, AudioLanguageModel]:
        if kind not in built:
            directory = tmp_path_factory.mktemp(f"qwen2_audio_{kind}")
            reference = _reference(directory, n_kv_head={"mha": 4, "gqa": 2}[kind])
            built[kind] = reference, load_model(directory, dtype="fp32")
        return built[kind]

    return get


@pytest.fixture
def models(build) -> tuple[torch.nn.Module, AudioLanguageModel]:
    """The released layout: n_kv_head == n_head."""
    return build("mha")


both_kinds = pytest.mark.parametrize("kind", ["mha", "gqa"])


def _clips(seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clips = []
    for duration in seconds:
        t = np.arange(int(duration * 16000)) / 16000
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        clips.append((tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return clips


def _features(clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Reference 30 s features and lalm's real-length layout of the same values."""
    extractor = transformers.WhisperFeatureExtractor(feature_size=128)
    out = extractor(clips, sampling_rate=16000, return_attention_mask=True,
                    padding="max_length", return_tensors="pt")
    padded, mask = out["input_features"], out["attention_mask"]
    lens = mask.sum(-1)
    ours = torch.zeros(len(clips), 128, int(lens.max()) + 2)
    for row, length in enumerate(lens.tolist()):
        ours[row, :, : length + 2] = padded[row, :, : length + 2]
    return {"padded": padded, "mask": mask, "features": ours, "lens": lens}


def _n_tokens(length: int) -> int:
    # the reference's own count (Qwen2AudioEncoder._get_feat_extract_output_lengths)
    return ((length - 1) // 2 + 1 - 2) // 2 + 1


def _text(n: int, seed: int) -> list[int]:
    return torch.randint(0, 151643, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _audio(length: int) -> list[int]:
    return [AUDIO_BOS, *[AUDIO] * _n_tokens(length), AUDIO_EOS]


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[151643] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask.bool()


def _reference_logits(reference, ids, mask, feats) -> torch.Tensor:
    with torch.no_grad():
        return reference(
            input_ids=ids, attention_mask=mask.long(), position_ids=positions_from_mask(mask),
            input_features=feats["padded"], feature_attention_mask=feats["mask"],
        ).logits


def _lalm_logits(model, ids, mask, feats) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, feats["features"], feats["lens"], ids == AUDIO, token_mask=mask).logits


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL) -> None:
    err = (actual - expected).abs().max().item() / expected.abs().max().item()
    assert err <= rel, f"max relative error {err:.2e} > {rel:.0e}"


def test_encoder_rows_equal_padded_reference(models) -> None:
    """Odd and even L, one clip per row, batch padded only to its longest clip."""
    reference, model = models
    feats = _features(_clips([0.51, 2.0, 1.337]))
    n = (feats["lens"] - 1) // 2 + 1
    keys = torch.arange(1500)[None, :] < n[:, None]  # the reference masks keys past n
    key_bias = torch.zeros(keys.shape).masked_fill(~keys, torch.finfo(torch.float32).min)
    with torch.no_grad():
        expected = reference.model.multi_modal_projector(
            reference.model.audio_tower(feats["padded"], key_bias[:, None, None]).last_hidden_state
        )
        rows = model.embed_audio(feats["features"], feats["lens"])
    for row, length in enumerate(feats["lens"].tolist()):
        assert rows[row].shape == (_n_tokens(length), 64)
        assert_rel_close(rows[row], expected[row, : _n_tokens(length)])


@both_kinds
def test_single_prompt_logits(build, kind: str) -> None:
    reference, model = build(kind)
    feats = _features(_clips([2.1], seed=1))
    row = [IM_START, *_text(5, 0), *_audio(int(feats["lens"][0])), *_text(7, 1)]
    ids, mask = _left_pad([row])
    expected = _reference_logits(reference, ids, mask, feats)
    assert_rel_close(_lalm_logits(model, ids, mask, feats), expected)


@both_kinds
def test_batch_of_three_clips_of_different_lengths(build, kind: str) -> None:
    """Left-padded batch: equal to the reference batch, and each row equal to itself alone."""
    reference, model = build(kind)
    feats = _features(_clips([0.6, 1.93, 1.1], seed=2))
    rows = [[*_text(3 + 4 * i, i), *_audio(length), *_text(2 + i, 10 + i)]
            for i, length in enumerate(feats["lens"].tolist())]
    ids, mask = _left_pad(rows)
    ours = _lalm_logits(model, ids, mask, feats)
    theirs = _reference_logits(reference, ids, mask, feats)
    for i in range(3):
        assert_rel_close(ours[i][mask[i]], theirs[i][mask[i]])
        alone = {"features": feats["features"][i : i + 1, :, : int(feats["lens"][i]) + 2],
                 "lens": feats["lens"][i : i + 1]}
        single_ids = torch.tensor([rows[i]])
        everything = torch.ones_like(single_ids, dtype=torch.bool)
        single = _lalm_logits(model, single_ids, everything, alone)
        assert_rel_close(ours[i][mask[i]], single[0], rel=1e-6)


def test_two_audios_in_one_prompt(models) -> None:
    reference, model = models
    feats = _features(_clips([1.3, 0.5], seed=3))
    first, second = feats["lens"].tolist()
    row = [*_text(4, 3), *_audio(first), *_text(3, 4), *_audio(second), *_text(5, 5)]
    ids, mask = _left_pad([row])
    expected = _reference_logits(reference, ids, mask, feats)
    assert_rel_close(_lalm_logits(model, ids, mask, feats), expected)


def test_multi_turn_chat(models) -> None:
    """ChatML ids: system, user (audio + question), assistant, user (audio + question)."""
    reference, model = models
    feats = _features(_clips([1.2, 0.7], seed=4))
    first, second = feats["lens"].tolist()
    turn = [IM_START, *_text(1, 6), NEWLINE]
    row = [
        *turn, *_text(6, 7), IM_END, NEWLINE,
        *turn, *_text(3, 8), *_audio(first), NEWLINE, *_text(5, 9), IM_END, NEWLINE,
        *turn, *_text(8, 10), IM_END, NEWLINE,
        *turn, *_text(3, 11), *_audio(second), NEWLINE, *_text(4, 12), IM_END, NEWLINE,
        *turn,
    ]
    ids, mask = _left_pad([row])
    expected = _reference_logits(reference, ids, mask, feats)
    assert_rel_close(_lalm_logits(model, ids, mask, feats), expected)


def test_greedy_tokens_with_kv_cache_match_reference_generate(models) -> None:
    """Prefill + cached decode steps pick the reference's greedy tokens."""
    reference, model = models
    feats = _features(_clips([1.2], seed=5))
    row = [*_text(4, 13), *_audio(int(feats["lens"][0])), *_text(3, 14)]
    ids = torch.tensor([row])
    with torch.no_grad():
        expected = reference.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            input_features=feats["padded"], feature_attention_mask=feats["mask"],
            max_new_tokens=6, do_sample=False,
        )[0, len(row):].tolist()
        rows = model.embed_audio(feats["features"], feats["lens"])
        embeds = model.embed_prompt(ids, rows, ids == AUDIO)
        model.decoder.setup_caches(batch_size=1, max_seq_len=len(row) + 8)
        logits = model.decoder(embeds, torch.arange(len(row))[None], output="last_logits")
        tokens = []
        for step in range(6):
            tokens.append(int(logits.argmax(-1)))
            pos = torch.tensor([[len(row) + step]])
            logits = model.decoder(model.decoder.embed(torch.tensor([[tokens[-1]]])), pos,
                                   output="last_logits")
        model.decoder.clear_caches()
    assert tokens == expected


def test_lalm_saved_checkpoint_loads_in_transformers(models, tmp_path) -> None:
    _, model = models
    save_model(model, tmp_path, max_shard_bytes=20_000_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    again = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path).eval()
    feats = _features(_clips([1.5], seed=6))
    row = [*_text(3, 15), *_audio(int(feats["lens"][0])), *_text(2, 16)]
    ids, mask = _left_pad([row])
    expected = _lalm_logits(model, ids, mask, feats)
    assert_rel_close(_reference_logits(again, ids, mask, feats), expected)
