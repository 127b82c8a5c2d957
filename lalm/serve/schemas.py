"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

Requests mirror OpenAI's chat completions (content parts ``text``, ``input_audio`` and
``audio_url``) and transcriptions; responses are what the official ``openai`` client parses:
``ChatCompletion``, ``ChatCompletionChunk`` (server-sent events), transcriptions in
json / text / srt / vtt / verbose_json, the model list and the error body. Unknown request
fields are ignored, as OpenAI's own server ignores fields an older client does not know.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

AudioFormat = Literal["wav", "mp3", "flac", "ogg"]
MAX_CHOICES = 8  # largest ``n`` a chat request may ask for
TranscriptionFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------------------- chat requests


class TextContent(_Request):
    """``{"type": "text", "text": ...}``."""

    type: Literal["text"]
    text: str


class InputAudio(_Request):
    """Inline audio: base64 file bytes and their container format."""

    data: str
    format: AudioFormat


class InputAudioContent(_Request):
    """``{"type": "input_audio", "input_audio": {"data": base64, "format": "wav"}}``."""

    type: Literal["input_audio"]
    input_audio: InputAudio


class AudioURL(_Request):
    """A ``data:`` URL (always allowed), an http(s) URL or a local path / ``file://`` URL
    (allowed only under the operator's allowlist)."""

    url: str


class AudioURLContent(_Request):
    """``{"type": "audio_url", "audio_url": {"url": ...}}`` (vLLM's audio part)."""

    type: Literal["audio_url"]
    audio_url: AudioURL


ContentPart = Annotated[TextContent | InputAudioContent | AudioURLContent,
                        Field(discriminator="type")]


class ChatMessage(_Request):
    """One turn; ``content`` is a string or a list of parts."""

    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Request):
    """``stream_options``: whether a last chunk carries the usage counts."""

    include_usage: bool = False


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``. Decoding fields map onto `GenerationOptions`:
    ``max_completion_tokens`` / ``max_tokens`` -> max_new_tokens, ``temperature``, ``top_p``,
    ``seed``, ``stop`` -> stop_sequences."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, lt=2**64)  # torch's generator seeds
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)  # choices (with a seed, choice i: seed + i)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None  # each output token's log-probability
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # alternatives per token
    # OpenAI fields lalm does not implement: a 400 names them unless unset or neutral
    # (`lalm.serve.inputs.refuse_unsupported_chat`)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


# ---------------------------------------------------------------------------- chat responses


class Usage(BaseModel):
    """Token counts of one request (prompt tokens include the audio tokens)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Counts with their total."""
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class AssistantMessage(BaseModel):
    """The answer of a non-streaming completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    """One alternative at a position: its text, log-probability and UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobs(BaseModel):
    """One output token's log-probability and its ``top_logprobs`` alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """``choices[i].logprobs`` when the request asks for ``logprobs``."""

    content: list[TokenLogprobs] | None


class Choice(BaseModel):
    """One completion choice (``n`` of them, ``index`` 0..n-1)."""

    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    """Body of a non-streaming chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    """New text of a streamed chunk (the first chunk carries the role)."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One choice of a streamed chunk."""

    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streaming chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    """Unix seconds, the ``created`` field."""
    return int(time.time())


# ---------------------------------------------------------------------------- transcriptions


class Transcription(BaseModel):
    """``response_format="json"``."""

    text: str


class Segment(BaseModel):
    """One verbose_json segment (OpenAI's fields): the whole clip, or one window of a clip
    longer than the encoder's window, with its seconds in the recording and its own prompt's
    tokens.

    ``seek`` is where the window starts, in 10-ms mel frames (as Whisper counts);
    ``compression_ratio`` is Whisper's: UTF-8 bytes of the text over their zlib-compressed
    bytes (a high ratio flags repetitive output). ``no_speech_prob`` is null: Whisper reads it
    off its ``<|nospeech|>`` token, and the Qwen-Audio families have no such token, so lalm
    has no probability to give.
    """

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float | None = None


class Word(BaseModel):
    """One timed word of verbose_json, in seconds of the recording."""

    word: str
    start: float
    end: float


class VerboseTranscription(BaseModel):
    """``response_format="verbose_json"``; ``words`` where the model gave word times (v1)."""

    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[Segment]
    words: list[Word] | None = None


# ---------------------------------------------------------------------------- models, errors


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lalm"


class ModelList(BaseModel):
    """Body of ``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """OpenAI's error object: a message naming the input, a type, the parameter, a code."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """``{"error": {...}}``, the body of every non-2xx response."""

    error: ErrorDetail
