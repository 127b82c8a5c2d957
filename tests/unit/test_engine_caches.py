"""The pipeline's two exact caches: encoded clips by the hash of their samples, and prefix KV
reuse (a conversation's next turn prefills only its new tokens; a repeated system prompt is
prefilled once). Outputs with and without each cache are the same."""

from __future__ import annotations

import pytest
import torch

from lalm.config import ModelConfig
from lalm.generation import Conversation, GenerationOptions, Pipeline
from lalm.generation.encoder_cache import EncoderCache, audio_digest
from lalm.prompt import AudioPart
from lalm.testing.models import random_model
from lalm.tokenizer import load_tokenizer

from conftest import tone_clip as _clip

OPTIONS = GenerationOptions(max_new_tokens=5)


@pytest.fixture(scope="module")
def pipes() -> tuple[Pipeline, Pipeline]:
    """(cached, plain): one model, one with both caches and one with neither."""
    from conftest import shared_fixture

    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    model = random_model(config, seed=6)
    tokenizer = load_tokenizer(shared_fixture("qwen2_audio_tokenizer"))
    return (Pipeline(model, tokenizer, OPTIONS),
            Pipeline(model, tokenizer, OPTIONS, encoder_cache_mib=0, prefix_slots=0))


def test_a_conversation_prefills_only_each_turns_new_tokens(pipes) -> None:
    cached, plain = pipes
    a, b = _clip(1.2, 0), _clip(0.8, 1)
    turns = [("What do you hear?", [a]), ("Say more.", []), ("And now?", [b])]
    with_reuse, without = Conversation(cached, system="Be brief."), Conversation(
        plain, system="Be brief.")
    stats = cached.engine.stats
    for k, (text, audios) in enumerate(turns):
        prefilled, reused = stats.prefill_tokens, stats.reused_tokens
        answer = with_reuse.ask(text, audios)
        expected = without.ask(text, audios)
        assert answer.tokens == expected.tokens and answer.text == expected.text
        prompt = len(cached.prepare([cached.chat_request(with_reuse.messages[:-1])]).ids[0])
        if k:  # the history's columns were copied, not computed again
            assert stats.reused_tokens > reused
            assert stats.prefill_tokens - prefilled < prompt / 2
        else:
            assert stats.prefill_tokens - prefilled == prompt
    assert plain.engine.stats.reused_tokens == 0


def test_a_repeated_system_prompt_is_prefilled_once(pipes) -> None:
    cached, plain = pipes
    system = {"role": "system", "content": "You are a careful listener. " * 6}
    questions = ["What is it?", "Is it loud?", "How long is it?"]
    before = cached.engine.stats.reused_tokens
    for q in questions:
        messages = [system, {"role": "user", "content": q}]
        assert cached.chat(messages).tokens == plain.chat(messages).tokens
    # every request after the first reuses at least the system prompt's tokens
    assert cached.engine.stats.reused_tokens - before >= 2 * 30


def test_the_same_audio_is_encoded_once(pipes, monkeypatch) -> None:
    cached, plain = pipes
    clip = _clip(1.5, 7)
    calls: list[int] = []
    original = cached.model.embed_audio

    def spy(features: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
        calls.append(int(features.shape[0]))
        return original(features, lens)

    monkeypatch.setattr(cached.model, "embed_audio", spy)
    hits = cached.encoder_cache.hits
    first = cached.chat("Describe it.", [clip])
    second = cached.chat("What is it?", [AudioPart(clip.copy())])  # same samples, new array
    assert calls == [1] and cached.encoder_cache.hits == hits + 1
    monkeypatch.undo()
    assert first.tokens == plain.chat("Describe it.", [clip]).tokens
    assert second.tokens == plain.chat("What is it?", [clip]).tokens
    different = clip.copy()
    different[100] += 1e-3
    assert audio_digest(different) != audio_digest(clip)


def test_the_encoder_cache_is_bounded_lru() -> None:
    cache = EncoderCache(max_mib=3 * 64 * 4 * 1000 / 2**20)  # room for three [1000, 64] rows
    rows = [torch.full((1000, 64), float(i)) for i in range(4)]
    for i, r in enumerate(rows[:3]):
        cache.put(bytes([i]), r)
    assert cache.get(bytes([0])) is rows[0]  # 0 is now the most recent
    cache.put(bytes([3]), rows[3])  # evicts 1, the least recently used
    assert cache.get(bytes([1])) is None and cache.get(bytes([2])) is rows[2]
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert (cache.hits, cache.misses) == (2, 1)
    off = EncoderCache(0)
    off.put(b"x", rows[0])
    assert off.get(b"x") is None
