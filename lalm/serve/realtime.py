"""Realtime transcription over a WebSocket, in the style of OpenAI's realtime transcription
sessions (``GET /v1/realtime?intent=transcription``).

The client sends JSON events: ``input_audio_buffer.append`` (``audio``: base64 PCM16
little-endian mono, 16 kHz by default, or 24 kHz as OpenAI's), ``input_audio_buffer.commit``,
``input_audio_buffer.clear`` and ``session.update`` (OpenAI's ``type: "transcription"`` session:
``audio.input.format`` / ``.transcription`` (model, language) / ``.turn_detection``; the beta
``transcription_session.update`` with its flat fields is read as well). The server answers:

* ``session.created`` / ``session.updated`` with the session's settings;
* ``input_audio_buffer.speech_started`` / ``speech_stopped`` (voice activity, ``audio_start_ms``
  / ``audio_end_ms`` in the stream), ``input_audio_buffer.committed`` per segment (with
  lalm's ``audio_start_ms`` / ``audio_end_ms`` of the segment), ``input_audio_buffer.cleared``;
* per segment, in order, ``conversation.item.input_audio_transcription.delta`` events as the
  model writes (for a segment between two overlapping cuts, one delta once it is stitched) then
  ``...completed`` (``transcript``), or ``...failed``; the deltas of an item concatenate to its
  transcript;
* ``error`` for a bad event (not JSON, an unknown type, bad base64, an odd number of PCM16
  bytes, an unsupported setting, ...): the event is ignored and the session goes on. A session
  that sends more audio than ``max_session_s`` or nothing for ``idle_timeout_s`` gets an
  ``error`` and is closed.

Segments come from `lalm.serve.segment.Segmenter` (energy voice activity, cut in pauses; a
segment at most ``max_segment_s`` long). **Context across segments**: neither family's ASR
prompt has a place for earlier text, so a segment's transcript depends on its own audio; a
boundary in a pause splits no word, and a cut in running speech overlaps the two segments by
``overlap_s`` and joins their transcripts by the words they share
(`lalm.serve.segment.stitch_overlap`), so no word is lost or repeated at a boundary. The
earlier item of such a pair completes once the later one is transcribed.

The model run is the ``transcribe`` callable the app passes (the server's batcher), so
realtime segments share batches with every other request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lalm.audio import SAMPLE_RATE, Seconds
from lalm.errors import AudioError, LalmError
from lalm.prompt import LANGUAGES, SPACELESS_LANGUAGES
from lalm.serve.segment import Segment, Segmenter, SpeechStarted, SpeechStopped, TurnDetection
from lalm.serve.segment import stitch_overlap

# (samples float32 [N] at 16 kHz, language, a callback for the text so far) -> the segment's
# transcript (the model run)
Transcriber = Callable[[np.ndarray, str, Callable[[str], Awaitable[None]]], Awaitable[str]]
RATES = (16000, 24000)  # PCM16 rates accepted: lalm's own, and OpenAI's
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"
FAILED = "conversation.item.input_audio_transcription.failed"


@dataclass(frozen=True)
class RealtimeLimits:
    """What one realtime session may do; every field is a ``lalm serve`` flag."""

    max_session_s: Seconds = 3600.0  # audio one session may send, in seconds
    max_event_bytes: int = 4 * 1024 * 1024  # one client event (JSON text)
    idle_timeout_s: Seconds = 120.0  # a session that sends nothing for this long is closed
    max_segment_s: Seconds = 15.0  # longest segment transcribed at once
    overlap_s: Seconds = 2.0  # overlap of the two segments of a cut in running speech
    min_gap_ms: int = 200  # shortest pause such a cut may fall in (else it overlaps)
    max_pending: int = 16  # segments waiting for the model; more fail
    max_sessions: int = 32  # sessions at once; more are refused

    def __post_init__(self) -> None:
        Segmenter(None, self.max_segment_s, self.overlap_s, self.min_gap_ms)  # checks those
        for name in ("max_session_s", "max_event_bytes", "idle_timeout_s", "max_pending",
                     "max_sessions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise AudioError(f"realtime {name} must be a number > 0, got {value!r}")


class EventError(Exception):
    """A client event that cannot be honoured: answered by an ``error`` event."""

    def __init__(self, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def _event_id() -> str:
    return "event_" + secrets.token_hex(10)


def _item_id() -> str:
    return "item_" + secrets.token_hex(10)


def decode_pcm16(data: object, param: str = "audio") -> np.ndarray:
    """Base64 PCM16 little-endian mono as float32 [N] in [-1, 1).

    Raises:
        EventError: not a string, not base64, or an odd number of bytes.
    """
    if not isinstance(data, str):
        raise EventError(f"{param}: expected a base64 string", "invalid_value", param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise EventError(f"{param}: not valid base64 ({e})", "invalid_base64", param) from None
    if len(raw) % 2:
        raise EventError(f"{param}: {len(raw)} bytes is not a whole number of 16-bit samples",
                         "invalid_audio", param)
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def _object(value: object, param: str) -> dict[str, Any]:
    """A JSON object field ({} for null or absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EventError(f"{param}: expected an object", "invalid_value", param)
    return value


def _only(mapping: dict, allowed: tuple[str, ...], param: str) -> None:
    """Refuse fields lalm does not implement (never silently ignored)."""
    for key, value in mapping.items():
        if key not in allowed and value not in (None, [], {}):
            raise EventError(f"{param}.{key}: not supported by this server; leave it out",
                             "unsupported_parameter", f"{param}.{key}")


@dataclass(frozen=True)
class Settings:
    """A session's settings (what ``session.update`` changes)."""

    rate: int = SAMPLE_RATE
    language: str = "en"
    detection: TurnDetection | None = TurnDetection()

    def describe(self, model: str) -> dict[str, Any]:
        """The settings as OpenAI's transcription session object."""
        d = self.detection
        turn = None if d is None else {
            "type": "server_vad", "threshold": d.threshold,
            "prefix_padding_ms": d.prefix_padding_ms,
            "silence_duration_ms": d.silence_duration_ms}
        return {"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": self.rate},
            "transcription": {"model": model, "language": self.language},
            "turn_detection": turn}}}


def updated_settings(settings: Settings, session: object, model: str, beta: bool) -> Settings:
    """``settings`` with a ``session.update``'s (or beta ``transcription_session.update``'s)
    session object applied.

    Raises:
        EventError: a field lalm does not implement, or a bad value (naming it).
    """
    if not isinstance(session, dict):
        raise EventError("session: expected an object", "invalid_value", "session")
    if beta:  # the flat beta fields, as the nested ones
        _only(session, ("input_audio_format", "input_audio_transcription", "turn_detection",
                        "modalities"), "session")
        fmt = session.get("input_audio_format")
        if fmt not in (None, "pcm16"):
            raise EventError(f"session.input_audio_format: {fmt!r} is not supported (pcm16)",
                             "unsupported_parameter", "session.input_audio_format")
        audio_in: dict[str, Any] = {"transcription": session.get("input_audio_transcription")}
        if fmt == "pcm16":
            audio_in["format"] = {"type": "audio/pcm", "rate": 24000}  # OpenAI's pcm16
        if "turn_detection" in session:
            audio_in["turn_detection"] = session["turn_detection"]
        param = "session"
    else:
        _only(session, ("type", "audio"), "session")
        if session.get("type") not in (None, "transcription"):
            raise EventError("session.type: this endpoint serves transcription sessions only",
                             "unsupported_parameter", "session.type")
        audio = _object(session.get("audio"), "session.audio")
        _only(audio, ("input",), "session.audio")
        audio_in = _object(audio.get("input"), "session.audio.input")
        _only(audio_in, ("format", "transcription", "turn_detection"), "session.audio.input")
        param = "session.audio.input"
    changes: dict[str, Any] = {}
    if audio_in.get("format") is not None:
        fmt = _object(audio_in["format"], f"{param}.format")
        _only(fmt, ("type", "rate"), f"{param}.format")
        rate = fmt.get("rate", SAMPLE_RATE)
        if fmt.get("type", "audio/pcm") != "audio/pcm" or rate not in RATES:
            raise EventError(f"{param}.format: {fmt!r} is not supported (audio/pcm at "
                             f"{' or '.join(map(str, RATES))} Hz)", "unsupported_parameter",
                             f"{param}.format")
        changes["rate"] = rate
    if audio_in.get("transcription") is not None:
        where = f"{param}.{'input_audio_' if beta else ''}transcription"
        transcription = _object(audio_in["transcription"], where)
        _only(transcription, ("model", "language", "prompt"), where)
        name = transcription.get("model")
        if name not in (None, model):
            raise EventError(f"{where}.model: {name!r} does not exist; this server serves "
                             f"{model!r}", "model_not_found", f"{where}.model")
        if transcription.get("prompt"):
            raise EventError(f"{where}.prompt: not supported (lalm's ASR prompts take no "
                             "text; context is carried by overlapping segments)",
                             "unsupported_parameter", f"{where}.prompt")
        language = transcription.get("language")
        if language is not None:
            if language not in LANGUAGES:
                raise EventError(f"{where}.language: {language!r} is not one of "
                                 f"{', '.join(LANGUAGES)}", "unsupported_language",
                                 f"{where}.language")
            changes["language"] = language
    if "turn_detection" in audio_in:
        where = f"{param}.turn_detection"
        if audio_in["turn_detection"] is None:
            changes["detection"] = None
        else:
            turn = _object(audio_in["turn_detection"], where)
            _only(turn, ("type", "threshold", "prefix_padding_ms", "silence_duration_ms"), where)
            if turn.get("type", "server_vad") != "server_vad":
                raise EventError(f"{where}.type: {turn.get('type')!r} is not supported "
                                 "(server_vad, or null for commits only)",
                                 "unsupported_parameter", f"{where}.type")
            fields = {k: turn[k] for k in ("threshold", "prefix_padding_ms",
                                           "silence_duration_ms") if k in turn}
            try:
                changes["detection"] = replace(settings.detection or TurnDetection(), **fields)
            except LalmError as e:
                raise EventError(f"{where}: {e}", "invalid_value", where) from None
    return replace(settings, **changes)


class Session:
    """One realtime transcription session: client events in, server events out.

    Args:
        send: sends one server event (a JSON-able dict).
        transcribe: the model run for one segment.
        model: the served model's id.
        limits: the operator's limits.
    """

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]],
                 transcribe: Transcriber, model: str, limits: RealtimeLimits) -> None:
        self._send = send
        self.transcribe = transcribe
        self.model = model
        self.limits = limits
        self.settings = Settings()
        self.segmenter = self._segmenter(self.settings.detection)
        self._resampler: Any = None
        self._item: str = _item_id()  # the id the next segment gets
        self._previous: str | None = None
        self._queue: asyncio.Queue[tuple[str, Segment, str]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self.closed = False  # a limit ended the session

    def _segmenter(self, detection: TurnDetection | None) -> Segmenter:
        limits = self.limits
        return Segmenter(detection, limits.max_segment_s, limits.overlap_s, limits.min_gap_ms)

    async def emit(self, type: str, **fields: Any) -> None:
        """Send one server event."""
        await self._send({"type": type, "event_id": _event_id(), **fields})

    async def error(self, message: str, code: str, param: str | None = None,
                    event_id: str | None = None) -> None:
        """Send an ``error`` event."""
        await self.emit("error", error={"type": "invalid_request_error", "code": code,
                                        "message": message, "param": param,
                                        "event_id": event_id})

    async def start(self) -> None:
        """Announce the session and start its transcription worker."""
        self._worker = asyncio.ensure_future(self._transcribe_in_order())
        await self.emit("session.created", session=self.settings.describe(self.model))

    async def stop(self) -> None:
        """Stop the worker (the client left): queued segments are dropped."""
        if self._worker is not None:
            self._worker.cancel()
            # the client is gone: a send that failed on its closed socket ended the worker
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker

    async def handle(self, text: str) -> None:
        """One client event (JSON text); a bad one is answered by an ``error`` event."""
        event_id = None
        try:
            if len(text) > self.limits.max_event_bytes:
                raise EventError(f"event of {len(text)} bytes is larger than this server's "
                                 f"limit of {self.limits.max_event_bytes}", "event_too_large")
            try:
                event = json.loads(text)
            except json.JSONDecodeError as e:
                raise EventError(f"event is not valid JSON: {e}", "invalid_json") from None
            if not isinstance(event, dict):
                raise EventError("event must be a JSON object", "invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            await self._dispatch(event)
        except EventError as e:
            await self.error(e.message, e.code, e.param, event_id)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            await self._append(decode_pcm16(event.get("audio")))
        elif kind == "input_audio_buffer.commit":
            segment = self.segmenter.commit()
            if segment is None:
                raise EventError("input_audio_buffer.commit: the buffer holds less than "
                                 "100 ms of uncommitted audio", "input_audio_buffer_commit_empty")
            await self._committed(segment)
        elif kind == "input_audio_buffer.clear":
            self.segmenter.clear()
            await self.emit("input_audio_buffer.cleared")
        elif kind in ("session.update", "transcription_session.update"):
            beta = kind == "transcription_session.update"
            settings = updated_settings(self.settings, event.get("session"), self.model, beta)
            await self._apply(settings)
            await self.emit("transcription_session.updated" if beta else "session.updated",
                            session=settings.describe(self.model))
        else:
            raise EventError(f"type: {kind!r} is not an event this server takes "
                             "(input_audio_buffer.append / commit / clear, session.update)",
                             "invalid_event_type", "type")

    async def _apply(self, settings: Settings) -> None:
        audio_seen = self.segmenter.n_samples > 0
        if settings.rate != self.settings.rate and audio_seen:
            raise EventError("session.update: the audio format can change only before the "
                             "first audio", "invalid_value", "session.audio.input.format")
        if settings.detection != self.settings.detection:
            if self.segmenter.speaking or (self.settings.detection is None and audio_seen):
                raise EventError("session.update: turn_detection can change only between "
                                 "segments (commit or clear first)", "invalid_value",
                                 "session.audio.input.turn_detection")
            self.segmenter.detection = settings.detection
        self.settings = settings

    async def _append(self, samples: np.ndarray) -> None:
        if self.settings.rate != SAMPLE_RATE:
            import soxr

            if self._resampler is None:
                self._resampler = soxr.ResampleStream(self.settings.rate, SAMPLE_RATE, 1,
                                                      dtype="float32")
            samples = self._resampler.resample_chunk(samples)
        limit = self.limits.max_session_s * SAMPLE_RATE
        if self.segmenter.n_samples + samples.shape[0] > limit:
            self.closed = True
            raise EventError(f"the session sent more than this server's limit of "
                             f"{self.limits.max_session_s:g} s of audio; it is closed",
                             "session_too_long")
        for event in self.segmenter.push(samples):
            if isinstance(event, SpeechStarted):
                await self.emit("input_audio_buffer.speech_started", item_id=self._item,
                                audio_start_ms=event.start * 1000 // SAMPLE_RATE)
            elif isinstance(event, SpeechStopped):
                await self.emit("input_audio_buffer.speech_stopped", item_id=self._item,
                                audio_end_ms=event.at * 1000 // SAMPLE_RATE)
            else:
                await self._committed(event)

    async def _committed(self, segment: Segment) -> None:
        item, self._item = self._item, _item_id()
        await self.emit("input_audio_buffer.committed", item_id=item,
                        previous_item_id=self._previous, audio_start_ms=segment.start_ms,
                        audio_end_ms=segment.end_ms)
        self._previous = item
        if self._queue.qsize() >= self.limits.max_pending:
            await self.emit(FAILED, item_id=item, content_index=0, error={
                "type": "server_error", "code": "transcription_backlog",
                "message": f"more than {self.limits.max_pending} segments wait for the model; "
                           "this one is dropped"})
            return
        self._queue.put_nowait((item, segment, self.settings.language))

    async def _transcribe_in_order(self) -> None:
        """Transcribe segments one after another; the item before an overlap waits for the
        next one, with which its text is stitched."""
        held: tuple[str, Segment, str] | None = None  # (item, segment, its unclaimed text)
        while True:
            item, segment, language = await self._queue.get()
            spaceless = language in SPACELESS_LANGUAGES
            shown = [""]  # what its deltas carried so far

            async def partial(text: str, item: str = item, shown: list[str] = shown,
                              live: bool = held is None and not segment.overlapped) -> None:
                # deltas as the tokens come, for an item no overlap stitching changes
                if live and text.startswith(shown[0]) and len(text) > len(shown[0]):
                    await self.emit(DELTA, item_id=item, content_index=0,
                                    delta=text[len(shown[0]):])
                    shown[0] = text

            try:
                text = (await self.transcribe(segment.samples, language, partial)).strip()
            except Exception as e:  # noqa: BLE001 (a model fault fails this item, not the session)
                if held is not None:
                    await self._complete(held[0], held[2])
                    held = None
                message = getattr(e, "message", None) or str(e) or type(e).__name__
                await self.emit(FAILED, item_id=item, content_index=0, error={
                    "type": "server_error", "code": "transcription_failed",
                    "message": message})
                continue
            if held is not None:
                final, text = stitch_overlap(held[1], held[2], segment, text, spaceless)
                await self._complete(held[0], final)
                held = None
            if segment.overlapped:
                held = (item, segment, text)
            else:
                await self._complete(item, text, shown[0])

    async def _complete(self, item: str, text: str, shown: str = "") -> None:
        """The item's last delta (what its earlier ones did not carry) and its transcript."""
        if text.startswith(shown) and len(text) > len(shown):
            await self.emit(DELTA, item_id=item, content_index=0, delta=text[len(shown):])
        await self.emit(COMPLETED, item_id=item, content_index=0, transcript=text)


class SessionCount:
    """Sessions open now, against `RealtimeLimits.max_sessions`."""

    def __init__(self) -> None:
        self.open = 0


async def serve_session(websocket: Any, transcribe: Transcriber, model: str,
                        limits: RealtimeLimits, count: SessionCount,
                        intent: str | None) -> None:
    """Run one session on a Starlette ``WebSocket`` (accepted here, selecting the
    ``realtime`` subprotocol when offered) until the client leaves or a limit closes it."""
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    lock = asyncio.Lock()

    async def send(event: dict[str, Any]) -> None:
        async with lock:
            await websocket.send_text(json.dumps(event))

    session = Session(send, transcribe, model, limits)
    if intent != "transcription":
        await session.error("this server serves transcription sessions only: connect to "
                            "/v1/realtime?intent=transcription", "unsupported_intent", "intent")
        return await websocket.close(1008)
    if count.open >= limits.max_sessions:
        await session.error(f"this server has {limits.max_sessions} realtime sessions open; "
                            "retry later", "sessions_full")
        return await websocket.close(1013)  # try again later
    count.open += 1
    try:
        await session.start()
        while not session.closed:
            try:
                message = await asyncio.wait_for(websocket.receive(), limits.idle_timeout_s)
            except asyncio.TimeoutError:
                await session.error(f"no event for {limits.idle_timeout_s:g} s; the session "
                                    "is closed", "idle_timeout")
                break
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is None:
                await session.error("binary messages are not events; send JSON text",
                                    "invalid_event")
                continue
            await session.handle(message["text"])
        await websocket.close(1008)
    finally:
        count.open -= 1
        await session.stop()
