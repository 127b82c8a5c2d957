"""Turning validated API bodies into lalm inputs, under the operator's limits.

Audio comes inline (``input_audio`` base64, ``data:`` URLs: always allowed) or by reference
(http(s) URLs and local paths: refused unless the operator allowlists URL prefixes or
directories; the check happens before anything is fetched or opened). Every clip is decoded
with `lalm.audio.load_audio` under the operator's per-clip limit (`Limits.max_audio_seconds`,
300 s by default: a chat clip longer than the encoder's 30-s window is split into windows by
the pipeline, a long upload is transcribed window by window), so an undecodable or too long
clip is a 400 naming the request field, before the request reaches the model. These functions block
(decoding, fetching): the app runs them in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from lalm.audio import load_audio
from lalm.errors import AudioTooLongError, LalmError
from lalm.generation import GenerationOptions
from lalm.longform import DEFAULT_MAX_CHAT_S
from lalm.prompt import AudioPart, Message, Part, TextPart
from lalm.serve.schemas import (
    AudioURLContent,
    ChatCompletionRequest,
    InputAudioContent,
    TextContent,
)

FETCH_TIMEOUT_S = 10.0  # seconds allowed for one allowlisted http(s) audio download, in all
MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_PATH_BYTES = 4096  # Linux PATH_MAX: a longer path name cannot be opened
MAX_NAME_BYTES = 255  # Linux NAME_MAX: nor can a longer file or folder name


class ApiError(Exception):
    """An error answered as OpenAI's ``{"error": {...}}`` body with an HTTP status.

    Attributes:
        status: HTTP status (4xx for bad input).
        message: what is wrong, naming the input.
        type: OpenAI error type ("invalid_request_error", "authentication_error", ...).
        param: the request field at fault, e.g. ``messages[0].content[1].input_audio.data``.
        code: a machine-readable code.
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (status, message, type,
                                                                        param, code)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; every field is a ``lalm serve`` flag."""

    max_body_bytes: int = 25 * 1024 * 1024  # request body (JSON or multipart), checked early
    # per clip, chat and transcription; None: no limit. Chat clips are bounded by the
    # pipeline's own max_audio_seconds as well (`lalm serve` sets both from one flag).
    max_audio_seconds: float | None = DEFAULT_MAX_CHAT_S
    max_audios: int = 8  # clips per request
    max_new_tokens: int = 1024  # largest max_tokens a request may ask for
    default_max_tokens: int = 256  # max_tokens when a request gives none


@dataclass(frozen=True)
class AudioAccess:
    """The operator's allowlist for audio by reference (empty: inline audio only).

    Attributes:
        url_prefixes: http(s) URL prefixes; a URL is allowed when scheme, host and port are
            equal and its path starts with the prefix's path.
        directories: local folders; a path (or ``file://`` URL) is allowed when it resolves,
            symlinks followed, to a file inside one of them.
    """

    url_prefixes: tuple[str, ...] = ()
    directories: tuple[Path, ...] = ()
    fetch_timeout_s: float = FETCH_TIMEOUT_S  # one download, connecting to the last byte

    def url_allowed(self, url: str) -> bool:
        """Whether an http(s) URL lies under an allowed prefix (a malformed one never is)."""
        try:
            target = urlsplit(url)
            target.port  # noqa: B018 (a port that is not a number in 0..65535 raises)
        except ValueError:
            return False
        if target.username is not None or target.password is not None:
            return False
        path = unquote(target.path)
        if "\\" in path or any(part in (".", "..") for part in path.split("/")):
            return False  # dot segments (plain or %-encoded) would climb out of the prefix
        for prefix in self.url_prefixes:
            allowed = urlsplit(prefix)
            prefix_path = allowed.path if allowed.path.endswith("/") else allowed.path + "/"
            if ((target.scheme, target.hostname, target.port)
                    == (allowed.scheme, allowed.hostname, allowed.port)
                    and (target.path + "/").startswith(prefix_path)):
                return True
        return False

    def path_allowed(self, path: Path) -> bool:
        """Whether a resolved path lies inside an allowed directory."""
        return any(path.is_relative_to(d.resolve()) for d in self.directories)


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 invalid_request_error."""
    return ApiError(400, message, param=param, code=code)


def decode_base64(data: str, param: str) -> bytes:
    """Strict base64 (whitespace allowed) to bytes; 400 naming ``param`` otherwise."""
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise invalid(f"{param}: not valid base64 ({e})", param, "invalid_base64") from None


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to another allowlisted URL."""

    def __init__(self, access: AudioAccess) -> None:
        self.access = access

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not self.access.url_allowed(newurl):
            raise urllib.error.URLError(f"redirect to {newurl} is outside the allowlist")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """Shuts a download's sockets when its time is up, in whatever phase it is (connecting,
    headers, body): socket timeouts bound each read only, and a server sending a byte now
    and then would hold the request for as long as it liked."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.sockets: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def _expire(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def passed(self) -> bool:
        """Whether the time is up."""
        return time.monotonic() >= self.end

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def handlers(self) -> list[urllib.request.BaseHandler]:
        """urllib handlers whose connections register their sockets here."""
        deadline = self

        class Plain(http.client.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                deadline.sockets.append(self.sock)

        class Secure(http.client.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                deadline.sockets.append(self.sock)

        class PlainHandler(urllib.request.HTTPHandler):
            def http_open(self, req):  # type: ignore[no-untyped-def]
                return self.do_open(Plain, req)

        class SecureHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):  # type: ignore[no-untyped-def]
                return self.do_open(Secure, req, context=self._context)

        return [PlainHandler(), SecureHandler()]


def _too_large(param: str, source: str, limits: Limits) -> ApiError:
    return ApiError(413, f"{param}: {source!r} is larger than this server's limit of "
                    f"{limits.max_body_bytes} bytes", param=param, code="audio_too_large")


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _fetch(url: str, param: str, access: AudioAccess, limits: Limits) -> bytes:
    if _has_control(url):
        raise invalid(f"{param}: the URL contains control characters (CR, LF, NUL, ...)",
                      param, "invalid_audio_url")
    if not access.url_allowed(url):
        raise invalid(f"{param}: audio URLs are not allowed by this server ({url!r} is not "
                      f"under an allowlisted prefix, or is not a valid URL; use input_audio "
                      f"or a data: URL)", param, "audio_source_not_allowed")
    with _Deadline(access.fetch_timeout_s) as deadline:
        opener = urllib.request.build_opener(_CheckedRedirects(access), *deadline.handlers())
        try:
            with opener.open(url, timeout=access.fetch_timeout_s) as response:
                data = response.read(limits.max_body_bytes + 1)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = (f"no complete answer within {access.fetch_timeout_s:g} s"
                      if deadline.passed else str(e))
            raise invalid(f"{param}: cannot fetch {url!r}: {reason}", param,
                          "audio_fetch_failed") from None
        if deadline.passed:  # the sockets were shut: what came is cut short
            raise invalid(f"{param}: cannot fetch {url!r}: no complete answer within "
                          f"{access.fetch_timeout_s:g} s", param, "audio_fetch_failed")
    if len(data) > limits.max_body_bytes:
        raise _too_large(param, url, limits)
    return data


def _read_local(location: str, param: str, access: AudioAccess, limits: Limits) -> bytes:
    if not access.directories:
        raise invalid(f"{param}: local audio paths are not allowed by this server", param,
                      "audio_source_not_allowed")
    raw = unquote(urlsplit(location).path) if location.startswith("file:") else location
    if _has_control(raw):
        raise invalid(f"{param}: the path contains control characters (NUL, CR, LF, ...)",
                      param, "invalid_audio_path")
    encoded = os.fsencode(raw)
    if len(encoded) > MAX_PATH_BYTES or any(len(n) > MAX_NAME_BYTES
                                            for n in encoded.split(b"/")):
        raise invalid(f"{param}: the path name is too long (at most {MAX_PATH_BYTES} bytes, "
                      f"{MAX_NAME_BYTES} per name)", param, "invalid_audio_path")
    path = Path(raw)
    try:
        resolved = path.resolve()
        if not path.is_absolute() or not access.path_allowed(resolved):
            raise invalid(f"{param}: {raw!r} is not inside an allowlisted directory", param,
                          "audio_source_not_allowed")
        if not resolved.is_file():
            raise invalid(f"{param}: {raw!r} is not a file", param, "audio_not_found")
        if resolved.stat().st_size > limits.max_body_bytes:
            raise _too_large(param, raw, limits)
        with resolved.open("rb") as f:
            data = f.read(limits.max_body_bytes + 1)
    except (OSError, ValueError) as e:
        raise invalid(f"{param}: cannot read {raw!r}: {e}", param, "audio_not_found") from None
    if len(data) > limits.max_body_bytes:  # it grew since
        raise _too_large(param, raw, limits)
    return data


def audio_bytes(part: InputAudioContent | AudioURLContent, param: str, access: AudioAccess,
                limits: Limits) -> bytes:
    """The encoded file bytes a content part names.

    Raises:
        ApiError: bad base64, a malformed data: URL, a reference outside the allowlist or
            malformed (control characters, a bad port, a name too long), a download that
            fails or takes longer than ``access.fetch_timeout_s``, a file over the body limit.
    """
    if isinstance(part, InputAudioContent):
        return decode_base64(part.input_audio.data, f"{param}.input_audio.data")
    url, param = part.audio_url.url, f"{param}.audio_url.url"
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as e:
        raise invalid(f"{param}: not a valid URL ({e})", param, "invalid_audio_url") from None
    if scheme == "data":
        header, comma, payload = url[5:].partition(",")
        if not comma or not header.endswith(";base64"):
            raise invalid(f"{param}: a data: URL must be data:<type>;base64,<data>", param,
                          "invalid_data_url")
        return decode_base64(payload, param)
    if scheme in ("http", "https"):
        return _fetch(url, param, access, limits)
    if scheme == "file" or scheme == "":
        return _read_local(url, param, access, limits)
    raise invalid(f"{param}: unsupported URL scheme {scheme!r}", param, "invalid_audio_url")


def decode_audio(data: bytes, param: str, limits: Limits) -> np.ndarray:
    """16 kHz mono float32 [N] samples of an encoded clip, within the duration limit.

    Raises:
        ApiError: 400 for undecodable or empty audio (code ``invalid_audio``) and for audio
            longer than ``limits.max_audio_seconds`` (code ``audio_too_long``, naming the limit).
    """
    try:
        return load_audio(data, max_seconds=limits.max_audio_seconds)
    except AudioTooLongError:
        raise invalid(f"{param}: the clip is longer than this server's limit of "
                      f"max_audio_seconds={limits.max_audio_seconds:g} s per clip", param,
                      "audio_too_long") from None
    except LalmError as e:
        raise invalid(f"{param}: {e}", param, "invalid_audio") from None


def chat_messages(body: ChatCompletionRequest, access: AudioAccess,
                  limits: Limits) -> list[Message]:
    """The conversation as lalm messages, every clip decoded.

    Raises:
        ApiError: too many clips, or a clip that cannot be used (see `audio_bytes`).
    """
    n_audio = sum(1 for m in body.messages if isinstance(m.content, list)
                  for p in m.content if not isinstance(p, TextContent))
    if n_audio > limits.max_audios:
        raise invalid(f"messages: {n_audio} audio clips, more than this server's limit of "
                      f"{limits.max_audios} per request", "messages", "too_many_audios")
    messages = []
    for i, message in enumerate(body.messages):
        content = message.content
        if content is None or isinstance(content, str):
            messages.append(Message(message.role, content or ""))
            continue
        parts: list[Part] = []
        for j, part in enumerate(content):
            param = f"messages[{i}].content[{j}]"
            if isinstance(part, TextContent):
                parts.append(TextPart(part.text))
            else:
                samples = decode_audio(audio_bytes(part, param, access, limits), param, limits)
                parts.append(AudioPart(samples, name=f"audio{len(parts)}"))
        messages.append(Message(message.role, tuple(parts)))
    return messages


def chat_options(body: ChatCompletionRequest, defaults: GenerationOptions,
                 limits: Limits) -> GenerationOptions:
    """The request's decoding fields over the server defaults.

    Raises:
        ApiError: max_tokens beyond the limit, too many stop sequences, or option values that
            `GenerationOptions` rejects.
    """
    max_new = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
    if max_new > limits.max_new_tokens:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise invalid(f"{param}: {max_new} is more than this server's limit of "
                      f"{limits.max_new_tokens}", param, "max_tokens_too_large")
    stop: Sequence[str] = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stop) > MAX_STOP_SEQUENCES:
        raise invalid(f"stop: at most {MAX_STOP_SEQUENCES} sequences", "stop")
    changes: dict[str, object] = {"max_new_tokens": max_new, "stop_sequences": tuple(stop),
                                  "min_new_tokens": min(defaults.min_new_tokens, max_new)}
    for name in ("temperature", "top_p", "seed"):
        if getattr(body, name) is not None:
            changes[name] = getattr(body, name)
    try:
        return replace(defaults, **changes)
    except LalmError as e:
        raise invalid(str(e)) from None



# OpenAI request fields lalm does not implement, with the values that ask for nothing (a
# client may send those): any other value is a 400 naming the field, never silently ignored.
UNSUPPORTED_CHAT: dict[str, tuple[object, ...]] = {
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "response_format": (None, {"type": "text"}),
}
UNSUPPORTED_TRANSCRIPTION: dict[str, tuple[str, ...]] = {  # form fields, values lowercased
    "logprobs": ("false",),
    "include": (),  # include[]=logprobs
    "include[]": (),
    "timestamp_granularities": ("segment",),  # segments are what verbose_json gives
    "timestamp_granularities[]": ("segment",),
    "prompt": ("",),
    "chunking_strategy": (),
}


def _unsupported(name: str, value: object) -> ApiError:
    return invalid(f"{name}: {value!r} is not supported by this server (lalm does not "
                   f"implement it); leave it out", name, "unsupported_parameter")


def logprobs_asked(body: ChatCompletionRequest) -> int | None:
    """How many alternatives per token a chat request wants with its log-probabilities
    (``top_logprobs``, 0 by default), or None when it wants none.

    Raises:
        ApiError: ``top_logprobs`` without ``logprobs: true`` (as OpenAI).
    """
    if not body.logprobs:
        if body.top_logprobs:
            raise invalid("top_logprobs: needs logprobs: true", "top_logprobs")
        return None
    return body.top_logprobs or 0


def refuse_unsupported_chat(body: ChatCompletionRequest) -> None:
    """Raises a 400 for a chat field lalm cannot honour (`UNSUPPORTED_CHAT`)."""
    for name, neutral in UNSUPPORTED_CHAT.items():
        value = getattr(body, name)
        if value not in neutral:
            raise _unsupported(name, value)


def refuse_unsupported_transcription(fields: Iterable[tuple[str, object]]) -> None:
    """Raises a 400 for a transcription form field lalm cannot honour
    (`UNSUPPORTED_TRANSCRIPTION`), e.g. ``stream=true`` or ``include[]=logprobs``."""
    for name, value in fields:
        neutral = UNSUPPORTED_TRANSCRIPTION.get(name)
        if neutral is not None and str(value).strip().lower() not in neutral:
            raise _unsupported(name, value)
