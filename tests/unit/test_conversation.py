"""Multi-turn chat with the audio history encoded once: every turn equals re-running the whole
conversation from scratch (which re-encodes every clip, as the reference does), while the
encoder sees each clip only in the turn that brings it."""

from __future__ import annotations

import pytest
import torch

from lalm.config import ModelConfig
from lalm.errors import PromptError
from lalm.generation import Conversation, GenerationOptions, Pipeline
from lalm.prompt import AudioPart, Message, TextPart
from lalm.testing.models import random_model
from lalm.tokenizer import load_tokenizer

from conftest import tone_clip as _clip

OPTIONS = GenerationOptions(max_new_tokens=5)


@pytest.fixture(scope="module", params=["v1", "qwen2"])
def pipe(request, qwen_tiktoken) -> Pipeline:
    if request.param == "v1":
        config = ModelConfig.from_name("tiny-random-v1", decoder={"vocab_size": 155947})
        return Pipeline(random_model(config, seed=5), load_tokenizer(qwen_tiktoken), OPTIONS)
    from conftest import shared_fixture

    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032})
    return Pipeline(random_model(config, seed=6),
                    load_tokenizer(shared_fixture("qwen2_audio_tokenizer")), OPTIONS)


class _EncoderSpy:
    """Counts the clips each `embed_audio` call encodes."""

    def __init__(self, pipe: Pipeline, monkeypatch) -> None:
        self.calls: list[int] = []
        original = pipe.model.embed_audio

        def spy(features: torch.Tensor, feature_lens: torch.Tensor) -> list[torch.Tensor]:
            self.calls.append(int(features.shape[0]))
            return original(features, feature_lens)

        monkeypatch.setattr(pipe.model, "embed_audio", spy)


def test_each_turn_equals_the_rerun_and_encodes_only_new_clips(pipe: Pipeline,
                                                                monkeypatch) -> None:
    a, b, c = _clip(1.3, 0), _clip(2.1, 1), _clip(0.9, 2)
    spy = _EncoderSpy(pipe, monkeypatch)
    conv = Conversation(pipe)
    turns = [("What do you hear?", [a, b]), ("Which one is longer?", []),
             ("And this one?", [c])]
    answers = []
    for text, audios in turns:
        before = len(spy.calls)
        answer = conv.ask(text, audios)
        answers.append(answer.text)
        assert sum(spy.calls[before:]) == len(audios)  # only this turn's new clips
        history = conv.messages[:-1]  # the whole conversation up to this turn's question
        rerun = pipe.chat(history)
        assert answer.tokens == rerun.tokens and answer.text == rerun.text
    assert [m.role for m in conv.messages] == ["user", "assistant"] * 3
    assert [m.content for m in conv.messages[1::2]] == [(TextPart(t),) for t in answers]
    assert [r.shape[0] for r in conv.audio_rows] == \
        [r.shape[0] for r in pipe.encode_audio([AudioPart(x) for x in (a, b, c)])]


def test_stream_records_the_same_turn_as_ask(pipe: Pipeline) -> None:
    a = _clip(1.0, 3)
    asked, streamed = Conversation(pipe, system="Be brief."), Conversation(pipe,
                                                                          system="Be brief.")
    answer = asked.ask("Describe.", [AudioPart(a, name="a.wav")])
    pieces = list(streamed.stream("Describe.", [AudioPart(a, name="a.wav")]))
    assert "".join(pieces) == answer.text
    assert streamed.messages[0] == Message("system", "Be brief.")
    assert [m.role for m in streamed.messages] == ["system", "user", "assistant"]
    assert asked.ask("More?").tokens == streamed.ask("More?").tokens


def test_an_empty_turn_is_refused_and_leaves_the_conversation(pipe: Pipeline) -> None:
    conv = Conversation(pipe)
    with pytest.raises(PromptError, match="empty prompt"):
        conv.ask("  ")
    assert conv.messages == [] and conv.audio_rows == ()


def test_a_turn_hears_each_audio_where_its_tag_stands(pipe: Pipeline) -> None:
    """"Compare <audio> with <audio>": the turn keeps text, audio, text, audio in that order
    (each clip encoded once, rows in prompt order), as `Pipeline.chat` does; the answer is the
    re-run's. Tags that are not as many as the audios are refused, the conversation unchanged."""
    a, b = AudioPart(_clip(1.0, 4)), AudioPart(_clip(0.6, 5))
    conv = Conversation(pipe)
    answer = conv.ask("Compare <audio> with <audio>, please.", [a, b])
    assert conv.messages[0].content == (TextPart("Compare "), a, TextPart(" with "), b,
                                        TextPart(", please."))
    rerun = pipe.chat("Compare <audio> with <audio>, please.", [a, b])
    assert answer.tokens == rerun.tokens
    with pytest.raises(PromptError, match="1 <audio> tag.*2 audios"):
        conv.ask("And <audio>?", [a, b])
    assert len(conv.messages) == 2 and len(conv.audio_rows) == 2
