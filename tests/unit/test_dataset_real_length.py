"""Training items count a clip's mel frames with the pipeline's rule (`FamilySpec.real_length`):
"ceil" for Qwen2-Audio, "floor" for Qwen-Audio v1, so a clip trains with the audio tokens and
features it is later run with."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from lalm.audio import audio_token_count, batch_log_mel, mel_length
from lalm.data.dataset import LOOKAHEAD, AudioTextDataset
from lalm.data.manifest import AudioRef, Example, ExampleTask
from lalm.prompt import QWEN2_AUDIO, QWEN_AUDIO
from lalm.tokenizer import load_tokenizer

N_SAMPLES = 16000 * 3 + 320 + 1  # 302.006 hops: 303 frames with "ceil", 302 with "floor"
N_MELS = {QWEN_AUDIO: 80, QWEN2_AUDIO: 128}


@pytest.mark.parametrize("family", [QWEN_AUDIO, QWEN2_AUDIO], ids=lambda f: f.name)
def test_dataset_features_and_slots_follow_the_pipeline_rule(family, tmp_path, qwen_tiktoken,
                                                            qwen2_tokenizer_dir) -> None:
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(N_SAMPLES)).astype(np.float32)
    sf.write(tmp_path / "x.wav", audio, 16000, subtype="FLOAT")
    tok = load_tokenizer(qwen_tiktoken if family is QWEN_AUDIO else qwen2_tokenizer_dir)
    example = Example("asr", (AudioRef("x.wav"),),
                      ExampleTask("asr", "en", "en", instruction="Transcribe the speech."), "hi")
    ds = AudioTextDataset([example], tok, N_MELS[family], audio_root=tmp_path)
    item = ds[0]
    rule = family.real_length
    assert rule == {QWEN2_AUDIO: "ceil", QWEN_AUDIO: "floor"}[family]
    length = mel_length(N_SAMPLES, rule)
    assert item["feature_lens"].tolist() == [length]
    n_slots = int(item["audio_slot_mask"].sum()) - (2 if family is QWEN_AUDIO else 0)
    assert n_slots == audio_token_count(length)
    features, lens = batch_log_mel([audio], N_MELS[family], rule)  # what the pipeline computes
    assert lens.tolist() == [length]
    torch.testing.assert_close(item["features"][0], features[0, :, :length + LOOKAHEAD])
    assert ds.lengths == ([item["ids"].shape[0]], [[length]])  # header estimate, same rule
