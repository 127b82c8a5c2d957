"""lalm vs transformers' Qwen3ASRForConditionalGeneration on a shrunken config.

The reference keeps every switch of the released model (Conv2d stem over 100-frame chunks,
windowed attention, MLP projector, Qwen3 decoder with q/k RMSNorm, no bias, a head width that is
not dim / heads, GQA, tied embeddings; `lalm.testing.family_checkpoints`). lalm loads both
published layouts (transformers-5 "-hf" and the original `thinker.*` release). Both models get
the same ids (`<|audio_start|><|audio_pad|>…<|audio_end|>` at the real ids) and the same log-mel
features: lalm's real-length front end, zero from each clip's length on and padded to a whole
number of chunks as the reference requires (the reference's own feature extractor fills those
frames with the log-mel of padded silence instead; lalm's encoder zeroes them).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import SHARED_FIXTURES

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from lalm.audio import batch_log_mel  # noqa: E402
from lalm.checkpoint import load_model, save_model  # noqa: E402
from lalm.checkpoint.safetensors_io import read_checkpoint_dir  # noqa: E402
from lalm.generation.generate import left_pad  # noqa: E402
from lalm.model import AudioLanguageModel, positions_from_mask  # noqa: E402
from lalm.testing.family_checkpoints import save_asr_checkpoint  # noqa: E402
from lalm.testing.models import (  # noqa: E402
    audio_span,
    greedy_tokens,
    random_text_ids as text_ids,
    relative_error,
    tone_clips,
)

TOKENIZER_DIR = SHARED_FIXTURES / "qwen2_audio_tokenizer"
AUDIO, AUDIO_START, AUDIO_END, ASR_TEXT = 151676, 151669, 151670, 151704
IM_START, IM_END, ENDOFTEXT, NEWLINE = 151644, 151645, 151643, 198
REL = 1e-5
NEW_TOKENS = 8

pytestmark = [
    pytest.mark.skipif(not TOKENIZER_DIR.is_dir(),
                       reason=f"shared tokenizer fixture missing: {TOKENIZER_DIR}"),
    pytest.mark.slow,  # building and saving the 152k-row reference takes ~20 s here
]


@pytest.fixture(scope="module")
def asr(tmp_path_factory) -> tuple[torch.nn.Module, AudioLanguageModel, Path]:
    directory = tmp_path_factory.mktemp("qwen3_asr")
    reference = save_asr_checkpoint(directory, TOKENIZER_DIR)
    return reference, load_model(directory), directory


def _features(seconds: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features zero from each clip's length on, padded to whole 100-frame chunks."""
    features, lens = batch_log_mel(tone_clips(seconds, seed), 128)
    width = -(-int(lens.max()) // 100) * 100
    features = torch.nn.functional.pad(features, (0, max(0, width - features.shape[2])))
    keep = torch.arange(features.shape[2])[None, :] < lens[:, None]
    return (features * keep[:, None])[:, :, :width], lens


def _audio(model: AudioLanguageModel, length: int) -> list[int]:
    return audio_span(model, length, AUDIO_START, AUDIO, AUDIO_END)


def _frames(features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    return (torch.arange(features.shape[2])[None, :] < lens[:, None]).long()


def _reference_logits(reference, ids, mask, features, lens) -> torch.Tensor:
    with torch.no_grad():
        return reference(input_ids=ids, attention_mask=mask.long(),
                         position_ids=positions_from_mask(mask), input_features=features,
                         input_features_mask=_frames(features, lens)).logits


def _lalm_logits(model, ids, mask, features, lens) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, features, lens, ids == AUDIO, token_mask=mask).logits


def _reference_greedy(reference, ids, mask, features, lens) -> list[list[int]]:
    with torch.no_grad():
        out = reference.generate(
            input_ids=ids, attention_mask=mask.long(), input_features=features,
            input_features_mask=_frames(features, lens), max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS, do_sample=False)
    return out[:, ids.shape[1]:].tolist()


def _lalm_greedy(model, ids, mask, features, lens) -> list[list[int]]:
    return greedy_tokens(model, ids, mask, features, lens, AUDIO, NEW_TOKENS)


def _prompt(model: AudioLanguageModel, length: int) -> list[int]:
    """ChatML: system, user with the audio span, assistant."""
    return [IM_START, *text_ids(1, 0), NEWLINE, IM_END, NEWLINE, IM_START, *text_ids(1, 1), NEWLINE,
            *_audio(model, length), IM_END, NEWLINE, IM_START, *text_ids(1, 2), NEWLINE]


def test_config_and_tied_weights(asr) -> None:
    reference, model, _ = asr
    cfg = model.config
    assert (cfg.encoder.stem, cfg.encoder.n_window, cfg.encoder.window_chunks,
            cfg.encoder.key_bias, cfg.projector.kind) == ("conv2d", 50, 2, True, "mlp")
    assert (cfg.decoder.qk_norm, cfg.decoder.qkv_bias, cfg.decoder.head_dim,
            cfg.decoder.tie_embeddings) == (True, False, 32, True)
    assert model.decoder.lm_head.weight is model.decoder.embed.weight
    torch.testing.assert_close(model.decoder.embed.weight, reference.lm_head.weight)


def test_original_release_layout_loads_the_same_model(asr, tmp_path) -> None:
    _, model, _ = asr
    save_asr_checkpoint(tmp_path, TOKENIZER_DIR, original=True)
    original = load_model(tmp_path)
    assert original.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(original.state_dict()[name], tensor), name


def test_tokenizer_files_carry_the_family_ids(asr) -> None:
    """Read with the `tokenizers` library (lalm's tokenizer learns this family with its text
    side) and with transformers' own tokenizer class."""
    _, _, directory = asr
    tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    for token, expected in (("<|audio_start|>", AUDIO_START), ("<|audio_end|>", AUDIO_END),
                            ("<|audio_pad|>", AUDIO), ("<asr_text>", ASR_TEXT),
                            ("<|im_end|>", IM_END)):
        assert tokenizer.token_to_id(token) == expected
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    text = "<|audio_start|><|audio_pad|><|audio_end|>language English<asr_text>Hi there."
    ids = tokenizer.encode(text).ids
    assert ids == hf(text)["input_ids"]
    assert ids[:3] == [AUDIO_START, AUDIO, AUDIO_END] and ASR_TEXT in ids


def test_encoder_rows_equal_reference(asr) -> None:
    """Less than a chunk, whole chunks, several windows with a partial last chunk, batched."""
    reference, model, _ = asr
    features, lens = _features([0.3, 1.0, 3.7, 2.24], seed=0)
    with torch.no_grad():
        expected = reference.get_audio_features(features, _frames(features, lens)).pooler_output
        rows = model.embed_audio(features, lens)
    assert [r.shape[0] for r in rows] == model.audio_row_counts(lens).tolist()
    assert relative_error(torch.cat(rows), expected) <= REL


def test_single_prompt_last_logits(asr) -> None:
    reference, model, _ = asr
    features, lens = _features([2.5], seed=1)
    ids, mask = left_pad([_prompt(model, int(lens[0]))], ENDOFTEXT)
    expected = _reference_logits(reference, ids, mask, features, lens)
    ours = _lalm_logits(model, ids, mask, features, lens)
    assert relative_error(ours[:, -1], expected[:, -1]) <= REL
    assert relative_error(ours, expected) <= REL


def test_left_padded_batch_logits_equal_reference_and_alone(asr) -> None:
    reference, model, _ = asr
    features, lens = _features([0.6, 2.9, 1.4], seed=2)
    rows = [[*text_ids(1 + 3 * i, i), *_prompt(model, length)] for i, length in
            enumerate(lens.tolist())]
    ids, mask = left_pad(rows, ENDOFTEXT)
    ours = _lalm_logits(model, ids, mask, features, lens)
    theirs = _reference_logits(reference, ids, mask, features, lens)
    for i, length in enumerate(lens.tolist()):
        assert relative_error(ours[i][mask[i]], theirs[i][mask[i]]) <= REL
        alone = _lalm_logits(model, torch.tensor([rows[i]]), torch.ones(1, len(rows[i]),
                             dtype=torch.bool), features[i:i + 1, :, :length], lens[i:i + 1])
        assert relative_error(ours[i][mask[i]], alone[0]) <= 1e-6


def test_greedy_tokens_match_reference_and_depend_on_the_audio(asr) -> None:
    """Single prompt, several audios in one prompt, and a left-padded batch of three."""
    reference, model, _ = asr
    features, lens = _features([1.2, 2.6, 0.7], seed=3)
    rows = [_prompt(model, length) for length in lens.tolist()]
    ids, mask = left_pad(rows, ENDOFTEXT)
    ours = _lalm_greedy(model, ids, mask, features, lens)
    assert ours == _reference_greedy(reference, ids, mask, features, lens)
    single_features = features[:1, :, :100 * -(-int(lens[0]) // 100)]
    single = _lalm_greedy(model, torch.tensor([rows[0]]),
                          torch.ones(1, len(rows[0]), dtype=torch.bool), single_features, lens[:1])
    assert single == ours[:1]
    assert single == _reference_greedy(reference, torch.tensor([rows[0]]),
                                       torch.ones(1, len(rows[0]), dtype=torch.bool),
                                       single_features, lens[:1])
    # random weights that say nothing would make this comparison empty: the outputs vary
    # along each sequence and with the audio
    assert all(len(set(tokens)) > 1 for tokens in ours)
    assert len({tuple(tokens) for tokens in ours}) == 3
    several = [*text_ids(2, 9)]
    for i, length in enumerate(lens.tolist()):
        several += [*_audio(model, length), *text_ids(2, 10 + i)]
    ids, mask = left_pad([several], ENDOFTEXT)
    assert _lalm_greedy(model, ids, mask, features, lens) == _reference_greedy(
        reference, ids, mask, features, lens)


def test_lalm_save_loads_in_transformers_with_the_same_logits(asr, tmp_path) -> None:
    _, model, _ = asr
    written = save_model(model, tmp_path)
    assert "lm_head.weight" not in read_checkpoint_dir(tmp_path)  # tied: stored once
    assert tmp_path / "preprocessor_config.json" in written
    again = transformers.Qwen3ASRForConditionalGeneration.from_pretrained(tmp_path).eval()
    features, lens = _features([1.7], seed=4)
    ids, mask = left_pad([_prompt(model, int(lens[0]))], ENDOFTEXT)
    assert relative_error(_reference_logits(again, ids, mask, features, lens),
                          _lalm_logits(model, ids, mask, features, lens)) <= REL
    reloaded = load_model(tmp_path)
    assert reloaded.decoder.lm_head.weight is reloaded.decoder.embed.weight
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
