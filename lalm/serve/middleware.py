"""The HTTP layer under the app: what every request passes before a handler runs.

Outermost first (`lalm.serve.app.build_asgi`):

* `Metrics`: request counts and seconds per route and status, refusals included;
* `HostCheck`: the ``Host`` header must name this server (a DNS-rebinding page in a browser
  sends its own host name), from an allowlist that defaults to the bind address;
* `Auth`: ``Authorization: Bearer KEY`` (scheme case-insensitive, RFC 7235) on /v1, /metrics
  and /openapi.json, or on every route with ``protect_all``;
* WebSocket handshakes (/v1/realtime) pass `HostCheck` (and their ``Origin``, which every
  browser sends, must name an allowed host too: a page elsewhere cannot open a session) and
  `Auth` (the key as a header, or, from a browser, which cannot set headers, as the
  ``openai-insecure-api-key.KEY`` subprotocol, as OpenAI's); a refused handshake gets 403;
* `BodyLimit`: the body within the size limit (a declared length over it is refused before a
  byte is read) and within the read timeout (408).

`header_timeout_protocol` closes connections whose request line and headers do not arrive in
time (uvicorn waits for them forever), so that half-sent requests cannot hold connections.
Every refusal is OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from lalm.serve import schemas as s

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")  # binds every interface: the host names are unknown
PROTECTED_PATHS = ("/metrics", "/openapi.json")  # besides /v1/*
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # a browser's API key on a WebSocket handshake


async def send_error(send: Send, status: int, message: str, code: str,
                     type: str = "invalid_request_error") -> None:
    """Answer OpenAI's error body and close the connection."""
    body = s.ErrorBody(error=s.ErrorDetail(message=message, type=type,
                                           code=code)).model_dump_json().encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """The body within ``max_bytes`` (413) and within ``read_timeout_s`` of the headers (408).

    A declared Content-Length over the limit is refused before a byte of the body is read,
    and such a body then streams to the app (each read bounded by the deadline); a body
    without one (chunked) is read here up to the limit and refused as soon as it passes it.
    """

    def __init__(self, app: App, max_bytes: int, read_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = f"request body larger than this server's limit of {self.max_bytes} bytes"
        late = f"request body not received within {self.read_timeout_s:g} s"
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await send_error(send, 413, too_large, "body_too_large")
        deadline = time.monotonic() + self.read_timeout_s
        done = False  # the last body message has come: later reads wait for disconnects
        timed_out = False

        async def timed() -> dict[str, Any]:
            nonlocal done, timed_out
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                done = timed_out = True
                return {"type": "http.disconnect"}  # the app stops reading
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        if declared is None and scope["method"] not in ("GET", "HEAD"):
            chunks, size = [], 0
            while not done:
                message = await timed()
                if timed_out:
                    return await send_error(send, 408, late, "request_timeout")
                if message["type"] != "http.request":
                    return
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    return await send_error(send, 413, too_large, "body_too_large")
                chunks.append(message.get("body", b""))
            replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

            async def replayed() -> dict[str, Any]:
                return replay.pop() if replay else await receive()

            return await self.app(scope, replayed, send)

        async def answered(message: dict[str, Any]) -> None:
            if not timed_out:
                await send(message)
            elif message["type"] == "http.response.start":  # the app's "body error" answer
                await send_error(send, 408, late, "request_timeout")

        await self.app(scope, timed, answered)


async def refuse_websocket(receive: Receive, send: Send) -> None:
    """Refuse a WebSocket handshake (the server answers 403)."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": 1008})


def host_name(header: str) -> str:
    """The host of a ``Host`` header value, without port or IPv6 brackets, lowercase."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def default_allowed_hosts(bind: str) -> tuple[str, ...] | None:
    """The ``Host`` names a server bound to ``bind`` accepts by default: its address, plus
    the loopback names when it is on loopback; None (any) when it binds every interface."""
    if bind in ANY_ADDRESS:
        return None
    if bind in LOOPBACK_HOSTS or bind.startswith("127."):
        return tuple(dict.fromkeys((host_name(bind), *LOOPBACK_HOSTS)))
    return (host_name(bind),)


class HostCheck:
    """Refuses requests whose ``Host`` is not in ``allowed`` (400); None admits any."""

    def __init__(self, app: App, allowed: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed = None if allowed is None else frozenset(host_name(h) for h in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allowed is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"host", b"").decode("latin-1")
        if scope["type"] == "websocket":
            origin = headers.get(b"origin", b"").decode("latin-1")
            origin_host = host_name(urlsplit(origin).netloc) if origin else None
            if host_name(given) not in self.allowed or (
                    origin_host is not None and origin_host not in self.allowed):
                return await refuse_websocket(receive, send)
            return await self.app(scope, receive, send)
        if host_name(given) not in self.allowed:
            return await send_error(
                send, 400, f"Host header {given!r} is not one this server answers to "
                f"({', '.join(sorted(self.allowed))}; the operator adds names with "
                f"--allowed-hosts)", "invalid_host")
        await self.app(scope, receive, send)


class Auth:
    """Requires ``Authorization: Bearer <api_key>`` (401 otherwise) on /v1/*, /metrics and
    /openapi.json, or on every route when ``protect_all``; nothing when ``api_key`` is None.
    /health (liveness probes) and the web page (static files; it asks for the key itself)
    stay open unless ``protect_all``."""

    def __init__(self, app: App, api_key: str | None, protect_all: bool = False) -> None:
        self.app = app
        self.api_key = api_key
        self.protect_all = protect_all

    def protects(self, path: str) -> bool:
        """Whether a request for ``path`` needs the key."""
        return self.api_key is not None and (
            self.protect_all or path.startswith("/v1/") or path in PROTECTED_PATHS)

    def authorized(self, header: str) -> bool:
        """Whether an ``Authorization`` value carries the key (any case of "Bearer")."""
        scheme, _, token = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), (self.api_key or "").encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.protects(scope["path"]):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if scope["type"] == "websocket":
            keys = [p[len(KEY_SUBPROTOCOL):] for p in scope.get("subprotocols", ())
                    if p.startswith(KEY_SUBPROTOCOL)]
            if not (self.authorized(given) or any(self.authorized(f"Bearer {k}")
                                                  for k in keys)):
                return await refuse_websocket(receive, send)
            return await self.app(scope, receive, send)
        if not self.authorized(given):
            return await send_error(send, 401, "missing or invalid API key (Authorization: "
                                    "Bearer KEY)", "invalid_api_key", "authentication_error")
        await self.app(scope, receive, send)


class Metrics:
    """Request counts and latency per route and status (for ``/metrics``)."""

    def __init__(self, app: App, routes: tuple[str, ...]) -> None:
        self.app = app
        self.routes = routes
        self.requests: Counter[tuple[str, int]] = Counter()
        self.seconds: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = [500]
        start = time.perf_counter()

        async def recorded(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            self.requests[route, status[0]] += 1
            self.seconds[route] += time.perf_counter() - start


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing a connection whose request line and headers are not
    all in within ``timeout_s`` of its opening or of the first byte after the last response.

    uvicorn times out idle keep-alive connections only; a client that sends half a request
    line held its connection (and a slot of the server) for as long as it liked.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderTimeoutProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _timer: asyncio.TimerHandle | None = None
        _armed_cycle: object = None

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._armed_cycle = self.cycle
            self._timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if self.cycle is self._armed_cycle and not self.transport.is_closing():
                self.transport.close()  # no request began: nothing to answer

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._timer is None and self._idle():
                self._arm()
            super().data_received(data)
            if self.cycle is not self._armed_cycle:  # the headers are in: a request began
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol
