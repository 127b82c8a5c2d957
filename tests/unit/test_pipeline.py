"""The pipeline on tiny random models with the real tokenizers: batched = single across prompt
lengths, clip lengths and audio counts; streaming; family-specific mel lengths; typed errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lalm.audio import audio_token_count, batch_log_mel, mel_length
from lalm.config import ModelConfig
from lalm.errors import AudioError, CheckpointError, GenerationError, PromptError
from lalm.generation import GenerationOptions, IncrementalDecoder, Pipeline, Request
from lalm.prompt import QWEN2_AUDIO, QWEN_AUDIO, AudioPart, Message, Prompt, TextPart
from lalm.testing.models import random_model
from lalm.tokenizer import load_tokenizer

OPTIONS = GenerationOptions(max_new_tokens=6)


@pytest.fixture(scope="module")
def qwen2_tokenizer():
    from conftest import shared_fixture

    return load_tokenizer(shared_fixture("qwen2_audio_tokenizer"))


@pytest.fixture(scope="module")
def pipe(qwen2_tokenizer) -> Pipeline:
    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    return Pipeline(random_model(config, seed=2), qwen2_tokenizer, OPTIONS)


def _clip(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * t)
            + 0.05 * rng.standard_normal(n)).astype(np.float32)


def test_batched_equals_single_for_mixed_prompts(pipe: Pipeline) -> None:
    a, b, c = _clip(16000 + 77, 0), _clip(8000, 1), _clip(40321, 2)
    requests = [
        pipe.chat_request("What is this sound?", [a]),
        pipe.chat_request("Compare the two clips, please, in detail.", [b, c]),
        pipe.chat_request("Say hello."),
        pipe.transcribe_request(c),
    ]
    batched = pipe.generate(requests, batch_size=4)
    for request, result in zip(requests, batched):
        alone = pipe.generate([request])[0]
        assert result.tokens == alone.tokens
        assert result.text == alone.text
    in_pairs = pipe.generate(requests, batch_size=2)
    assert [r.tokens for r in in_pairs] == [r.tokens for r in batched]


def test_stream_pieces_join_to_the_generated_text(pipe: Pipeline) -> None:
    request = pipe.chat_request("Describe it.", [_clip(12345, 3)])
    pieces = list(pipe.stream(request))
    assert len(pieces) > 1
    assert "".join(pieces) == pipe.generate([request])[0].text


def test_incremental_decoder_never_splits_characters(qwen2_tokenizer) -> None:
    text = "naïve 日本語 😀 done"
    ids = qwen2_tokenizer.encode(text)
    assert len(ids) > len(text.split())  # some characters span several byte-level tokens
    decoder = IncrementalDecoder(qwen2_tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == text


def test_stop_sequence_cuts_text_and_stream(pipe: Pipeline) -> None:
    request = pipe.chat_request("Count.", [_clip(9000, 4)])
    free = pipe.generate([request])[0]
    stop = free.text[len(free.text) // 2: len(free.text) // 2 + 2]
    options = GenerationOptions(max_new_tokens=6, stop_sequences=(stop,))
    cut = pipe.generate([request], options)[0]
    assert cut.text == free.text[: free.text.find(stop)]
    assert "".join(pipe.stream(request, options)) == cut.text


def test_real_length_is_family_specific(qwen2_tokenizer, qwen_tiktoken) -> None:
    """Qwen2-Audio counts a last partial hop (ceil), v1 does not (floor)."""
    n = 16000 + 100
    assert mel_length(n, "ceil") == 101 and mel_length(n, "floor") == 100
    assert mel_length(480_000 + 100, "ceil") == 3000
    _, lens = batch_log_mel([_clip(n, 5)], 128, "ceil")
    assert lens.tolist() == [101]
    v1 = Pipeline(random_model(ModelConfig.from_name(
        "tiny-random-v1", decoder={"vocab_size": 155947}), seed=1), load_tokenizer(qwen_tiktoken))
    prompt_v1 = v1.prepare([v1.transcribe_request(_clip(n, 5))])
    v1_slots = int(torch.isin(prompt_v1.ids, torch.tensor([151851])).sum())
    assert v1_slots == audio_token_count(100)
    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    v2 = Pipeline(random_model(config), qwen2_tokenizer)
    n_v2 = 16000 * 3 + 320 + 1  # 303 frames with ceil: one more audio token than floor's 302
    prompt_v2 = v2.prepare([v2.transcribe_request(_clip(n_v2, 6))])
    assert int((prompt_v2.ids == 151646).sum()) == audio_token_count(303) == 76
    assert audio_token_count(302) == 75


def test_v1_pipeline_parses_task_output(qwen_tiktoken) -> None:
    config = ModelConfig.from_name("tiny-random-v1", decoder={"vocab_size": 155947})
    v1 = Pipeline(random_model(config, seed=4), load_tokenizer(qwen_tiktoken), OPTIONS)
    result = v1.transcribe([_clip(20000, 7)])[0]
    assert len(result.tokens) <= 6 and result.parsed is not None
    assert v1.family is QWEN_AUDIO


def test_typed_errors(pipe: Pipeline, tmp_path) -> None:
    with pytest.raises(AudioError, match="missing.wav"):
        pipe.chat("What?", [str(tmp_path / "missing.wav")])
    with pytest.raises(PromptError, match="2 audios"):
        Prompt.from_text("<|audio_bos|><|AUDIO|><|audio_eos|>Hi", QWEN2_AUDIO,
                         [AudioPart(_clip(8000, 0)), AudioPart(_clip(8000, 1))])
    with pytest.raises(PromptError, match="empty prompt"):
        pipe.chat("  ")
    with pytest.raises(GenerationError, match="max_seq_len"):
        pipe.chat("Hi", options=GenerationOptions(max_new_tokens=600))
    with pytest.raises(AudioError, match="max_audio_seconds=300"):  # longer: split, not cut
        pipe.chat("Hi", [_clip(16000 * 301, 0)])
    with pytest.raises(PromptError, match="message list"):
        pipe.chat([Message("user", (TextPart("x"),))], [_clip(8000, 0)])
    v1_tok_model = random_model(ModelConfig.from_name("tiny-random-v1"))
    with pytest.raises(CheckpointError, match="BOS/EOS"):
        Pipeline(v1_tok_model, pipe.tokenizer)


def test_raw_text_prompt_and_request_objects(pipe: Pipeline) -> None:
    clip = _clip(16000, 8)
    prompt = Prompt.from_text("<|audio_bos|><|AUDIO|><|audio_eos|>Caption:", QWEN2_AUDIO,
                              [AudioPart(clip)])
    raw = pipe.generate([Request(prompt)])[0]
    chat = pipe.chat([Message("user", (AudioPart(clip), TextPart("Caption:")))])
    assert raw.finish_reason in ("stop", "length") and chat.finish_reason in ("stop", "length")
    assert raw.timings["prepare"] > 0 and raw.timings["generate"] > 0


def test_chat_puts_each_audio_where_its_tag_stands(pipe: Pipeline) -> None:
    """"Listen to this: <audio> and tell me" (a string, or ms-swift-style messages with an
    audio list): the prompt hears the audio between the two texts, several audios each at its
    own tag in order; tags that are not as many as the audios are a PromptError."""
    a, b = AudioPart(_clip(8000, 0)), AudioPart(_clip(8000, 1))
    request = pipe.chat_request("Listen to this: <audio> and tell me what it is.", [a])
    pieces = request.prompt.pieces
    assert [isinstance(p, AudioPart) for p in pieces] == [False, True, False] and pieces[1] is a
    texts = [pieces[0].text, pieces[2].text]
    assert texts == ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>"
                     "user\nListen to this: Audio 1: <|audio_bos|>",
                     "<|audio_eos|>\n and tell me what it is.<|im_end|>\n"
                     "<|im_start|>assistant\n"]
    two = pipe.chat_request("First <audio>, then <audio>: which is higher?", [a, b]).prompt
    assert two.audios == (a, b)
    assert "user\nFirst Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n, then Audio 2: " \
           "<|audio_bos|><|AUDIO|><|audio_eos|>\n: which is higher?<|im_end|>" in two.text
    turns = [Message("user", "Hear <audio>."), Message("assistant", "Yes."),
             Message("user", (TextPart("And <audio>?"),))]
    chat = pipe.chat_request(turns, [a, b]).prompt
    assert chat.audios == (a, b) and "user\nAnd Audio 2: <|audio_bos|>" in chat.text
    with pytest.raises(PromptError, match="1 <audio> tag.*2 audios"):
        pipe.chat_request("Compare <audio> with the other.", [a, b])
    with pytest.raises(PromptError, match="2 <audio> tag.*0 audios"):
        pipe.chat_request("<audio><audio>?")
