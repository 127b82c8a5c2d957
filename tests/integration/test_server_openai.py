"""The real `openai` client, unchanged, against a real `lalm serve` process on 127.0.0.1:
chat with input_audio (plain and streamed), transcription in every response format, typed
errors. The model is tiny and random: the tests check the protocol, not the words."""

from __future__ import annotations

import base64

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from lalm.testing.server import running_server, save_tiny_checkpoint, wav_bytes

pytestmark = pytest.mark.integration
API_KEY = "test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import shared_fixture

    folder = tmp_path_factory.mktemp("serve")
    model = save_tiny_checkpoint(folder / "tiny", shared_fixture("qwen2_audio_tokenizer"))
    with running_server(model, "--api-key", API_KEY, "--default-max-tokens", "8",
                        log=folder / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def _audio_messages(question: str) -> list[dict]:
    data = base64.b64encode(wav_bytes(1.2, 500.0)).decode()
    return [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        {"type": "text", "text": question}]}]


def test_models_lists_the_served_model(client) -> None:
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_with_audio_plain_and_streamed_agree(client) -> None:
    messages = _audio_messages("What do you hear?")
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 6
    # 1.2 s of audio: 120 mel frames -> 30 audio tokens, plus the chat template and question
    assert reply.usage.prompt_tokens > 30
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same tokens, streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_multi_turn_with_two_clips(client) -> None:
    first = _audio_messages("Describe it.")
    second = _audio_messages("And this one?")[0]
    messages = [*first, {"role": "assistant", "content": "A tone."}, second]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3)
    assert reply.usage.prompt_tokens > 2 * 30
    assert reply.usage.completion_tokens <= 3


@pytest.mark.parametrize("fmt", ["json", "verbose_json", "text", "srt", "vtt"])
def test_transcription_formats(client, fmt) -> None:
    result = client.audio.transcriptions.create(
        model="tiny", file=("clip.wav", wav_bytes(2.0, 300.0)), response_format=fmt)
    if fmt == "json":
        assert isinstance(result.text, str)
    elif fmt == "verbose_json":
        assert result.duration == pytest.approx(2.0)
        assert result.segments[0].end == pytest.approx(2.0)
        assert result.segments[0].text == result.text
    elif fmt == "srt":
        assert result.startswith("1\n00:00:00,000 --> 00:00:02,000\n")
    elif fmt == "vtt":
        assert result.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000\n")
    else:
        assert isinstance(result, str)


def test_errors_are_typed_openai_errors(client, server) -> None:
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.models.list()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=_audio_messages("Hi"))
    bad_audio = [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "bm90IGF1ZGlv", "format": "wav"}}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=bad_audio)
    assert info.value.body["param"] == "messages[0].content[0]"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny", messages=_audio_messages("Hi"),
                                       max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="language"):
        client.audio.transcriptions.create(model="tiny", file=("a.wav", wav_bytes(1.0)),
                                           language="xx")
    # the server still answers after all of that
    assert client.chat.completions.create(model="tiny", messages=_audio_messages("Hi"),
                                          max_tokens=2).choices
