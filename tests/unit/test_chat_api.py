"""The Python API takes the shapes people pass: decoding fields as keywords or an options
dict, and messages as OpenAI / transformers dicts as well as lalm's `Message`; what it
documents is what it returns."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from lalm.errors import GenerationError, PromptError
from lalm.generation import GenerationResult, Pipeline
from lalm.generation.messages import as_messages
from lalm.prompt import AudioPart, Message, TextPart
from lalm.testing.models import random_model
from lalm.testing.training import write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tones")
    write_tone_dataset(folder, 1)
    return str(next((folder / "audio").glob("*.wav")))


@pytest.fixture(scope="module")
def pipe(wav) -> Pipeline:
    folder = Path(wav).parents[1]
    manifest = folder / "train.jsonl"
    tokenizer = load_tokenizer(write_tiny_tokenizer(folder / "tokenizer", manifest))
    config = random_model("tiny-random").config
    decoder = type(config.decoder)(**{**config.decoder.__dict__,
                                      "vocab_size": -(-len(tokenizer) // 64) * 64})
    model = random_model(type(config)(config.encoder, config.projector, decoder), seed=3)
    return Pipeline(model, tokenizer)


def test_chat_takes_generation_fields_as_keywords_or_a_dict(pipe, wav) -> None:
    assert 1 <= len(pipe.chat("Hi", [wav], max_new_tokens=5).tokens) <= 5  # was a TypeError
    assert len(pipe.chat("Hi", [wav], max_new_tokens=4, min_new_tokens=4).tokens) == 4
    assert len(pipe.chat("Hi", options={"max_new_tokens": 2, "min_new_tokens": 2}).tokens) == 2
    assert len(pipe.transcribe([wav], max_new_tokens=3, min_new_tokens=3)[0].tokens) == 3
    with pytest.raises(GenerationError, match=r"max_tokens; valid: max_new_tokens, .*seed"):
        pipe.chat("Hi", options={"max_tokens": 2})
    with pytest.raises(GenerationError, match="unknown generation option"):
        pipe.chat("Hi", top_n=2)


def test_message_dicts_in_every_layout_give_the_same_answer(pipe, wav) -> None:
    question = "Which note is played?"
    data = base64.b64encode(Path(wav).read_bytes()).decode()
    reference = pipe.chat([Message("user", (AudioPart(wav), TextPart(question)))],
                          max_new_tokens=4).tokens
    layouts = [
        {"type": "audio", "audio_url": wav},  # Qwen2-Audio's model card
        {"type": "audio", "audio": wav},  # transformers' chat templates
        {"type": "audio", "path": wav},
        {"type": "audio_url", "audio_url": {"url": f"file://{wav}"}},
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},  # OpenAI
        {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{data}"}},
    ]
    for part in layouts:
        messages = [{"role": "user", "content": [part, {"type": "text", "text": question}]}]
        assert pipe.chat(messages, max_new_tokens=4).tokens == reference, part
    # a string content, a system turn, history, parts in their places
    converted = as_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Before"},
                                     {"type": "audio", "audio_url": wav}, "after"]},
        {"role": "assistant", "content": "A4"},
        Message("user", "And now?"),
    ])
    assert [m.role for m in converted] == ["system", "user", "assistant", "user"]
    assert [type(p).__name__ for p in converted[1].content] == ["TextPart", "AudioPart",
                                                                "TextPart"]
    assert converted[1].content[1].source == wav


def test_bad_messages_say_what_is_accepted(pipe, wav) -> None:
    with pytest.raises(PromptError, match=r"messages\[0\] is a tuple; .*lalm.prompt import "
                                          r"Message"):
        pipe.chat([("user", "Hi")])  # type: ignore[list-item]
    with pytest.raises(PromptError, match=r"messages\[0\] needs 'role' and 'content'"):
        pipe.chat([{"role": "user", "text": "Hi"}])
    with pytest.raises(PromptError, match=r"content\[0\]: unknown part"):
        pipe.chat([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])
    with pytest.raises(PromptError, match="does not fetch https URLs"):
        pipe.chat([{"role": "user", "content": [{"type": "audio",
                                                 "audio_url": "https://x.org/a.wav"}]}])
    with pytest.raises(PromptError, match="not valid base64"):
        pipe.chat([{"role": "user", "content": [{"type": "input_audio",
                                                 "input_audio": {"data": "%%"}}]}])


def test_docstrings_document_what_is_returned(pipe, wav) -> None:
    doc = Pipeline.chat.__doc__ or ""
    assert len(doc.splitlines()) > 10  # help(pipe.chat) was one line
    for shape in ("max_new_tokens=64", "options=", "audio_url", "Message(", "GenerationError"):
        assert shape in doc
    result = pipe.chat("Hi", [wav], max_new_tokens=2)
    timings_doc = (GenerationResult.__doc__ or "").split("timings:")[1]
    named = set(re.findall(r'"(\w+)"', timings_doc))
    assert named == set(result.timings) == {"prepare", "generate"}


def test_conversation_takes_generation_fields_as_keywords(pipe, wav) -> None:
    from lalm.generation import Conversation

    conversation = Conversation(pipe)
    assert len(conversation.ask("Hi", [wav], max_new_tokens=3, min_new_tokens=3).tokens) == 3
    pieces = list(conversation.stream("And?", options={"max_new_tokens": 2}))
    assert len(conversation.messages) == 4 and "".join(pieces) == conversation.messages[-1] \
        .content[0].text
