"""Greedy generation: lalm's pipeline vs transformers' Qwen2AudioForConditionalGeneration.generate.

One checkpoint directory, saved by transformers (random tiny weights, released quirks) beside
the real tokenizer and processor files. transformers gets its own processor's inputs (30 s
padded features, left-padded ids); lalm gets the audio and the messages, and runs its real-length
path. The generated token ids must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from lalm.generation import GenerationOptions, Pipeline
from lalm.prompt import AudioPart, Message, TextPart
from lalm.testing.checkpoints import save_reference_checkpoint

pytestmark = pytest.mark.slow  # transformers' generate over a 156k vocabulary: ~45 s in all

STOP = (151643, 151645)  # <|endoftext|>, <|im_end|>: the reference's eos ids
NEW = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import shared_fixture

    directory = tmp_path_factory.mktemp("qwen2_audio_generate")
    reference = save_reference_checkpoint(directory, shared_fixture("qwen2_audio_tokenizer"),
                                          seed=7)
    processor = transformers.AutoProcessor.from_pretrained(str(directory))
    processor.tokenizer.padding_side = "left"
    options = GenerationOptions(max_new_tokens=NEW, stop_token_ids=STOP)
    return reference, processor, Pipeline.from_pretrained(directory, dtype="fp32"), options


def _clip(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * rng.uniform(150, 1500) * t)
            + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _reference_tokens(reference, processor, texts: list[str], clips: list[np.ndarray]
                      ) -> list[list[int]]:
    inputs = processor(text=texts, audio=clips, sampling_rate=16000, padding=True,
                       return_tensors="pt")
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=NEW, do_sample=False,
                                 eos_token_id=list(STOP), pad_token_id=STOP[0])
    rows = []
    for row in out[:, inputs["input_ids"].shape[1]:].tolist():
        ends = [i for i, t in enumerate(row) if t in STOP]
        rows.append(row[: ends[0] + 1] if ends else row)
    return rows


def _check(setup, conversations: list[list[Message]]) -> None:
    reference, processor, pipe, options = setup
    requests = [pipe.chat_request(messages) for messages in conversations]
    clips = [part.source for r in requests for part in r.prompt.audios]
    expected = _reference_tokens(reference, processor, [r.prompt.text for r in requests], clips)
    ours = pipe.generate(requests, options)
    assert [r.tokens for r in ours] == expected
    assert any(len(set(tokens)) > 1 for tokens in expected)  # not a degenerate constant output


def _user(*parts: object) -> Message:
    return Message("user", tuple(AudioPart(p) if isinstance(p, np.ndarray) else TextPart(p)
                                 for p in parts))


def test_single_prompt(setup) -> None:
    _check(setup, [[_user(_clip(16000 * 2 + 77, 0), "What can you hear?")]])


def test_batch_of_three_prompts_with_clips_of_different_lengths(setup) -> None:
    _check(setup, [
        [_user(_clip(8000 + 13, 1), "Describe the sound.")],
        [_user(_clip(16000 * 3 + 321, 2), "Is there speech in this recording at all?")],
        [_user(_clip(16000, 3), "Pitch?")],
    ])


def test_two_audios_in_one_prompt(setup) -> None:
    _check(setup, [[_user(_clip(12000 + 5, 4), _clip(20000 + 150, 5), "Which one is louder?")]])


def test_multi_turn_chat(setup) -> None:
    _check(setup, [[
        Message("system", "You answer briefly."),
        _user(_clip(14000 + 99, 6), "What is this?"),
        Message("assistant", "A tone."),
        _user(_clip(9000 + 1, 7), "And this one?"),
    ]])


@pytest.mark.parametrize("n_samples", [16000 + 1, 16000 + 159, 33333, 160 * 777 + 80])
def test_audio_token_counts_match_the_processor(setup, n_samples: int) -> None:
    """N not a multiple of 160: Qwen2-Audio counts the last partial hop as a frame (ceil)."""
    _, processor, pipe, _ = setup
    request = pipe.chat_request("Hi", [_clip(n_samples, 8)])
    inputs = processor(text=[request.prompt.text], audio=[request.prompt.audios[0].source],
                       sampling_rate=16000, return_tensors="pt")
    ours = pipe.prepare([request]).ids
    assert ours.tolist() == inputs["input_ids"].tolist()
