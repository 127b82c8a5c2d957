"""Qwen2-Audio prompts: lalm's ids vs transformers' own Qwen2AudioProcessor on the fixture files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_fixture

from lalm.audio import audio_token_count
from lalm.prompt import (
    QWEN2_AUDIO,
    AudioPart,
    Message,
    TextPart,
    build_base_prompt,
    build_chat_prompt,
)
from lalm.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow  # importing transformers and building its processor takes seconds


@pytest.fixture(scope="module")
def processor():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoProcessor.from_pretrained(str(shared_fixture("qwen2_audio_tokenizer")))


# Sample counts of the transformers processor test (mel lengths 404 and 292) plus edge lengths.
LENGTHS = [64640, 46720, 161, 480000]


def _audio(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1


@pytest.mark.parametrize("kind", ["chat", "base"])
def test_ids_match_processor(processor, kind: str) -> None:
    tok = load_tokenizer(shared_fixture("qwen2_audio_tokenizer"))
    audios = [AudioPart(_audio(n)) for n in LENGTHS]
    if kind == "chat":
        messages = [Message("user", [audios[0], TextPart("What's that sound?")]),
                    Message("assistant", "Glass."),
                    Message("user", [*audios[1:], TextPart("And these?")])]
        prompt = build_chat_prompt(messages, QWEN2_AUDIO)
        hf_messages = [{"role": m.role, "content": [
            {"type": "audio", "audio_url": "x"} if isinstance(p, AudioPart)
            else {"type": "text", "text": p.text} for p in m.content]} for m in messages]
        text = processor.apply_chat_template(hf_messages, add_generation_prompt=True,
                                             tokenize=False)
        assert text == prompt.text
    else:
        prompt = build_base_prompt(audios, "Generate the caption in English:")
        text = prompt.text
    out = processor(text=text, audio=[a.source for a in audios], sampling_rate=16000,
                    return_tensors="np")
    mel_lens = out["feature_attention_mask"].sum(-1).tolist()
    counts = [int(audio_token_count(n)) for n in mel_lens]
    assert counts[:2] == [101, 73]
    ids = prompt.encode(tok, counts)
    assert ids.ids == out["input_ids"][0].tolist()
    assert sum(b - a for a, b in ids.audio_spans) == int((out["input_ids"][0] == 151646).sum())
