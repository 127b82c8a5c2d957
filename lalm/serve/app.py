"""The HTTP app: OpenAI-compatible endpoints over one `Pipeline`, batched by a `Batcher`.

    POST /v1/chat/completions      chat with text + audio parts; ``stream: true`` for SSE
    POST /v1/audio/transcriptions  multipart upload; json / text / srt / vtt / verbose_json
    GET  /v1/models, /health, /metrics (Prometheus text), / (the web page)
    WS   /v1/realtime?intent=transcription  live transcription (`lalm.serve.realtime`)

Thin, as DESIGN.md asks: a handler validates the body (pydantic; OpenAI parameters lalm
cannot honour are refused, never ignored), decodes audio under the limits
(`lalm.serve.inputs`), builds the prompts with `Pipeline.chat_request` /
`plan_transcription`, checks that they fit the model's context (`lalm.serve.budget`, in a
worker thread, so an oversized prompt never reaches the batcher's one thread), submits them
to the batcher and formats the result. A client that leaves while it waits cancels its jobs
(its row leaves the running batch). Bad input of any kind is a 4xx with OpenAI's error body;
the Host header, the API key, the body's size and its read time are checked before a handler
runs (`lalm.serve.middleware`).

Audio longer than the encoder's 30-s window, up to the operator's ``max_audio_seconds``: a chat
clip is split into windows that fill its one audio span (`Pipeline.encode_audio`); an upload to
transcribe is planned into windows (`Pipeline.plan_transcription`), each window a job of the
batcher (so the windows of concurrent uploads share batches), and the window results are
stitched (`Pipeline.stitch_transcription`): verbose_json / srt / vtt give one segment per
window with its seconds in the recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lalm.errors import GenerationError, LalmError
from lalm.audio import HOP_LENGTH
from lalm.generation import (
    GenerationOptions,
    GenerationResult,
    Pipeline,
    TokenLogprob,
    Transcript,
    TranscriptionPlan,
)
from lalm.generation import Request as PromptRequest  # fastapi's Request is the HTTP one
from lalm.prompt import LANGUAGES, SPACELESS_LANGUAGES
from lalm.serve import schemas as s
from lalm.serve.batcher import Batcher, Done, Failed, QueueFullError, Ticket, Token
from lalm.serve.budget import PromptBudget
from lalm.serve.realtime import RealtimeLimits, SessionCount, serve_session
from lalm.serve.inputs import (
    ApiError,
    AudioAccess,
    Limits,
    chat_messages,
    chat_options,
    decode_audio,
    invalid,
    logprobs_asked,
    refuse_unsupported_chat,
    refuse_unsupported_transcription,
)
from lalm.serve.middleware import (
    LOOPBACK_HOSTS,
    Auth,
    BodyLimit,
    HostCheck,
    Metrics,
    header_timeout_protocol,
)
from lalm.subtitles import Cue, format_srt, format_vtt
from lalm.tokenizer import Tokenizer

STATIC = Path(__file__).with_name("static")


@dataclass(frozen=True)
class ServerConfig:
    """How the server runs; every field is a ``lalm serve`` flag."""

    model_name: str  # the id clients pass as ``model`` (GET /v1/models lists it)
    # required as ``Authorization: Bearer KEY`` on /v1/*, /metrics and /openapi.json when set
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    access: AudioAccess = field(default_factory=AudioAccess)
    max_batch_size: int = 16  # requests per shared forward pass
    max_queue: int = 256  # requests waiting at most; more get 429
    request_timeout_s: float = 120.0  # a request not answered by then gets 504
    protect_all: bool = False  # with api_key: every route needs it (/health, the web page too)
    # ``Host`` header names answered (others: 400, against DNS rebinding); None: any
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    read_timeout_s: float = 60.0  # for a request's line and headers, then for its body
    realtime: RealtimeLimits = field(default_factory=RealtimeLimits)  # /v1/realtime sessions


def served_model_name(model_dir: str | Path) -> str:
    """The default model id of a checkpoint directory: its name, or for the ``export``
    folder a training run writes (``runs/NAME/export``) the run's name."""
    path = Path(model_dir).resolve()
    return path.parent.name if path.name == "export" and path.parent.name else path.name


# ---------------------------------------------------------------------------- errors


async def _until_disconnected(http: Request) -> None:
    """Return when the client closes its connection (call once its body has been read)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


@contextlib.asynccontextmanager
async def _watching(http: Request) -> AsyncIterator[asyncio.Task[None]]:
    """A task that ends when the client leaves, cancelled on exit."""
    task = asyncio.ensure_future(_until_disconnected(http))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _error_response(error: ApiError) -> JSONResponse:
    body = s.ErrorBody(error=s.ErrorDetail(message=error.message, type=error.type,
                                           param=error.param, code=error.code))
    return JSONResponse(body.model_dump(), status_code=error.status)


def _job_error(error: BaseException) -> ApiError:
    """The API error for a job's failure: bad input 400, expired 504, anything else 500."""
    if isinstance(error, GenerationError) and "max_seq_len" in str(error):
        return invalid(str(error), "messages", "context_length_exceeded")
    if isinstance(error, LalmError):
        return invalid(str(error))
    if isinstance(error, TimeoutError):
        return ApiError(504, f"request timed out: {error}", type="timeout", code="timeout")
    return ApiError(500, f"internal error: {type(error).__name__}", type="server_error",
                    code="internal_error")


def _validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return invalid(f"request body is not valid JSON: {first.get('msg')}", None,
                       "invalid_json")
    where = f"{param}: " if param else "request body: "
    return invalid(where + str(first.get("msg")), param, "invalid_value")


# ---------------------------------------------------------------------------- the app


def create_app(pipeline: Pipeline, config: ServerConfig) -> FastAPI:
    """The FastAPI app serving ``pipeline`` (the batcher starts and stops with it)."""
    batcher = Batcher(pipeline, config.max_batch_size, config.max_queue)
    budget = PromptBudget(pipeline)
    limits, access = config.limits, config.access
    created = s.now()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(lambda: budget.longest_token_bytes)  # once, before requests
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)

    app = FastAPI(title="lalm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_validation_error(exc))

    @app.exception_handler(LalmError)
    async def _lalm_error(request: Request, exc: LalmError) -> JSONResponse:
        return _error_response(invalid(str(exc)))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error_response(ApiError(exc.status_code, str(exc.detail), code="not_found"
                                        if exc.status_code == 404 else None))

    def check_model(name: str) -> None:
        if name != config.model_name:
            raise ApiError(404, f"model {name!r} does not exist; this server serves "
                           f"{config.model_name!r}", param="model", code="model_not_found")

    def submit(request: PromptRequest, options: GenerationOptions, stream: bool,
               top_logprobs: int | None = None) -> Ticket:
        try:
            return batcher.submit(request, options, config.request_timeout_s, stream,
                                  top_logprobs)
        except QueueFullError as e:
            raise ApiError(429, f"server busy: {e}; retry later", type="rate_limit_error",
                           code="queue_full") from None

    async def next_event(ticket: Ticket, deadline: float,
                         gone: asyncio.Task[None] | None = None) -> Token | Done:
        """The job's next event; the job is cancelled when the client leaves first (``gone``
        ends) or the deadline passes."""
        get = asyncio.ensure_future(ticket.get(deadline - time.monotonic()))
        if gone is not None:
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                ticket.cancel()  # its row leaves the running batch at the next step
                raise ApiError(499, "the client closed the connection",
                               code="client_closed_request")
        try:
            event = await get
        except (TimeoutError, asyncio.TimeoutError):
            ticket.cancel()
            raise _job_error(TimeoutError(f"no answer within {config.request_timeout_s} s"))
        if isinstance(event, Failed):
            raise _job_error(event.error)
        return event

    async def results_of(requests: Sequence[PromptRequest],
                         options: GenerationOptions | Sequence[GenerationOptions],
                         http: Request, top_logprobs: int | None = None) -> list[Done]:
        """Submit the jobs together (they run side by side) and wait for all within one
        deadline; when one fails or the client leaves, the others are cancelled. ``options``:
        one for all, or one per request."""
        deadline = time.monotonic() + config.request_timeout_s
        each = [options] * len(requests) if isinstance(options, GenerationOptions) else options
        tickets: list[Ticket] = []
        results: list[Done] = []
        try:
            async with _watching(http) as gone:
                for request, option in zip(requests, each):
                    tickets.append(submit(request, option, False, top_logprobs))
                for ticket in tickets:
                    while not isinstance(event := await next_event(ticket, deadline, gone),
                                         Done):
                        pass
                    results.append(event)
            return results
        finally:
            for ticket in tickets:
                ticket.cancel()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_name, "queue_depth": batcher.depth}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return _prometheus(app.state.metrics, batcher)

    @app.get("/v1/models")
    async def models() -> s.ModelList:
        return s.ModelList(data=[s.ModelCard(id=config.model_name, created=created)])

    @app.post("/v1/chat/completions")
    async def chat_completions(body: s.ChatCompletionRequest, http: Request) -> Any:
        check_model(body.model)
        refuse_unsupported_chat(body)
        top = logprobs_asked(body)
        options = chat_options(body, pipeline.options, limits)
        # choice i of n: with a seed, seed + i (distinct draws, each reproducible)
        choices = [options if options.seed is None else replace(options, seed=options.seed + i)
                   for i in range(body.n)]
        messages = await run_in_threadpool(chat_messages, body, access, limits)
        request = await run_in_threadpool(pipeline.chat_request, messages)
        await run_in_threadpool(budget.check, request, options, "messages")
        logprobs = (lambda result: _logprobs(pipeline.tokenizer, result)) if top is not None \
            else (lambda result: None)
        if not body.stream:
            done = await results_of([request] * body.n, choices, http, top)
            return s.ChatCompletion(
                id=s.completion_id(), created=s.now(), model=config.model_name,
                choices=[s.Choice(index=i, message=s.AssistantMessage(content=d.result.text),
                                  finish_reason=_finish_reason(d.result.finish_reason),
                                  logprobs=logprobs(d.result))
                         for i, d in enumerate(done)],
                usage=s.Usage.of(done[0].prompt_tokens,
                                 sum(len(d.result.tokens) for d in done)))
        tickets = [submit(request, option, True, top) for option in choices]
        deadline = time.monotonic() + config.request_timeout_s
        try:
            async with _watching(http) as gone:  # errors before the first token: 4xx
                firsts = [await next_event(ticket, deadline, gone) for ticket in tickets]
        except ApiError:
            for ticket in tickets:
                ticket.cancel()
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(  # it cancels the stream (and so the jobs) when the client goes
            _sse(tickets, firsts, deadline, next_event, config.model_name, include_usage,
                 None if top is None else pipeline.tokenizer),
            media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        http: Request,
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        language: Annotated[str | None, Form()] = None,
        response_format: Annotated[s.TranscriptionFormat, Form()] = "json",
        temperature: Annotated[float, Form(ge=0.0, le=2.0)] = 0.0,
        stream: Annotated[bool, Form()] = False,
    ) -> Any:
        check_model(model)
        if stream and response_format not in ("json", "text"):
            raise invalid("response_format: stream=true gives transcript.text.delta / done "
                          "events, for json or text only", "response_format")
        refuse_unsupported_transcription((await http.form()).multi_items())
        language = language or "en"
        if language not in LANGUAGES:
            raise invalid(f"language: {language!r} is not one of {', '.join(LANGUAGES)}",
                          "language", "unsupported_language")
        data = await file.read()
        samples = await run_in_threadpool(decode_audio, data, "file", limits)
        plan = await run_in_threadpool(pipeline.plan_transcription, samples, language)
        options = replace(pipeline.options, max_new_tokens=limits.default_max_tokens,
                          temperature=temperature, stop_sequences=())
        for request in plan.requests:
            await run_in_threadpool(budget.check, request, options, "file")
        if stream:
            return StreamingResponse(transcription_events(plan, options),
                                     media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        done = await results_of(plan.requests, options, http)
        transcript = pipeline.stitch_transcription(plan, [d.result for d in done])
        return _transcription(transcript, plan, response_format, temperature)

    async def transcript_so_far(request: PromptRequest, options: GenerationOptions,
                                tickets: list[Ticket]) -> AsyncIterator[str | Done]:
        """A transcription job streamed: its parsed text after each token, then its `Done`
        (the caller cancels ``tickets``, to which its ticket is added)."""
        tickets.append(submit(request, options, True))
        deadline = time.monotonic() + config.request_timeout_s
        raw = ""
        while isinstance(event := await next_event(tickets[-1], deadline), Token):
            if event.finish_reason != "stop":  # the engine's text stream (no stop sequences)
                raw += event.text
                yield pipeline.family.parse(raw, request.spec).text.strip()
        yield event

    async def transcription_events(plan: TranscriptionPlan, options: GenerationOptions
                                   ) -> AsyncIterator[str]:
        """OpenAI's transcription stream: ``transcript.text.delta`` events, then
        ``transcript.text.done``; the deltas concatenate to the done event's text. A clip sent
        whole streams as its tokens come; a long clip's windows are stitched first, then sent
        one delta per segment."""
        deadline = time.monotonic() + config.request_timeout_s
        tickets: list[Ticket] = []
        emitted = ""

        def more(text: str) -> str:  # the event carrying what ``text`` adds, if it extends
            nonlocal emitted
            if not text.startswith(emitted) or len(text) == len(emitted):
                return ""
            delta, emitted = text[len(emitted):], text
            return _event({"type": "transcript.text.delta", "delta": delta})

        try:
            if plan.windows is None:
                dones = []
                async for step in transcript_so_far(plan.requests[0], options, tickets):
                    if isinstance(step, Done):
                        dones.append(step)
                    elif piece := more(step):
                        yield piece
            else:
                tickets += [submit(request, options, False) for request in plan.requests]
                dones = []
                for ticket in tickets:
                    while not isinstance(event := await next_event(ticket, deadline), Done):
                        pass
                    dones.append(event)
            results = [d.result for d in dones]
            transcript = pipeline.stitch_transcription(plan, results)
            sep = "" if plan.language in SPACELESS_LANGUAGES else " "
            shown = ""
            for segment in transcript.segments:  # a long clip: one delta per segment
                shown = (shown + sep + segment.text.strip()).strip()
                if piece := more(shown):
                    yield piece
            text = _transcription(transcript, plan, "json", 0.0).text
            if piece := more(text):
                yield piece
            usage = s.Usage.of(sum(d.prompt_tokens for d in dones),
                               sum(len(r.tokens) for r in results))
            yield _event({"type": "transcript.text.done", "text": text, "usage": {
                "type": "tokens", "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}})
        except ApiError as e:  # the status line is sent already
            yield _event({"type": "error", "error": {"message": e.message, "type": e.type,
                                                     "code": e.code}})
        finally:
            for ticket in tickets:
                ticket.cancel()

    async def transcribe_segment(samples: Any, language: str,
                                 partial: Callable[[str], Awaitable[None]]) -> str:
        """A realtime segment's transcript, run by the batcher like an upload's window;
        ``partial`` gets the text so far after each token."""
        request = pipeline.transcribe_request(samples, language)
        options = replace(pipeline.options, max_new_tokens=limits.default_max_tokens,
                          temperature=0.0, stop_sequences=())
        await run_in_threadpool(budget.check, request, options, "audio")
        tickets: list[Ticket] = []
        try:
            async for step in transcript_so_far(request, options, tickets):
                if isinstance(step, Done):
                    result = step.result
                else:
                    await partial(step)
        finally:
            for ticket in tickets:
                ticket.cancel()
        return (result.parsed.text if result.parsed else result.text).strip()

    app.state.transcribe_segment = transcribe_segment  # what realtime sessions run
    sessions = SessionCount()

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket, intent: str | None = None) -> None:
        await serve_session(websocket, app.state.transcribe_segment, config.model_name,
                            config.realtime, sessions, intent)

    app.state.metrics = None  # set by `build_asgi`
    return app


def build_asgi(pipeline: Pipeline, config: ServerConfig) -> Callable[..., Awaitable[None]]:
    """The app under its HTTP layer (`lalm.serve.middleware`): metrics, the Host check, the
    API key, the body's size and read time."""
    app = create_app(pipeline, config)
    routes = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions",
              "/v1/audio/transcriptions")
    inner = BodyLimit(app, config.limits.max_body_bytes, config.read_timeout_s)
    guarded = HostCheck(Auth(inner, config.api_key, config.protect_all), config.allowed_hosts)
    app.state.metrics = Metrics(guarded, routes)
    return app.state.metrics


def _event(body: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(body)}\n\n"


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _token_logprobs(tokenizer: Tokenizer, record: TokenLogprob) -> s.TokenLogprobs:
    """One token's OpenAI logprobs entry (texts decoded one token at a time: a token that
    ends inside a UTF-8 character shows U+FFFD, its ``bytes`` those of that text)."""
    def text(token: int) -> str:
        return tokenizer.decode([token])

    return s.TokenLogprobs(
        token=text(record.token), logprob=record.logprob,
        bytes=list(text(record.token).encode()),
        top_logprobs=[s.TopLogprob(token=text(t), logprob=lp, bytes=list(text(t).encode()))
                      for t, lp in record.top])


def _logprobs(tokenizer: Tokenizer, result: GenerationResult) -> s.ChoiceLogprobs:
    """A finished choice's logprobs: one entry per output token (the stop token not shown)."""
    records = list(result.token_logprobs or ())
    if result.finish_reason == "stop" and records:
        records = records[:-1]
    return s.ChoiceLogprobs(content=[_token_logprobs(tokenizer, r) for r in records])


async def _sse(tickets: Sequence[Ticket], firsts: Sequence[Token | Done], deadline: float,
               next_event: Callable[[Ticket, float], Awaitable[Token | Done]], model: str,
               include_usage: bool, logprobs: Tokenizer | None) -> AsyncIterator[str]:
    """Server-sent events of one streamed completion (OpenAI's chunk sequence), its ``n``
    choices interleaved as their tokens come. The text of each chunk is what the engine
    releases (`lalm.generation.engine.TextStream`: held back while it may start a stop
    sequence, cut there). With ``logprobs`` (the tokenizer) every token gets a chunk with its
    log-probabilities (the stop token excepted)."""
    cid, created = s.completion_id(), s.now()

    def chunk(index: int, delta: s.Delta, finish: str | None = None,
              usage: s.Usage | None = None, choices: bool = True,
              token: Token | None = None) -> str:
        lp = None
        if logprobs is not None and token is not None and token.logprob is not None:
            lp = s.ChoiceLogprobs(content=[_token_logprobs(logprobs, token.logprob)])
        body = s.ChatCompletionChunk(
            id=cid, created=created, model=model, usage=usage,
            choices=[s.ChunkChoice(index=index, delta=delta, finish_reason=finish,
                                   logprobs=lp)] if choices else [])
        return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

    for i in range(len(tickets)):
        yield chunk(i, s.Delta(role="assistant", content=""))
    current: dict[int, Token | Done] = dict(enumerate(firsts))
    done: dict[int, Done] = {}
    waiting: dict[asyncio.Future[Token | Done], int] = {}
    try:
        while True:
            for i, event in sorted(current.items()):
                if isinstance(event, Done):
                    done[i] = event
                    yield chunk(i, s.Delta(), _finish_reason(event.result.finish_reason))
                    continue
                token = event if event.finish_reason != "stop" else None  # stop: not shown
                if event.text or (logprobs is not None and token is not None):
                    yield chunk(i, s.Delta(content=event.text), token=token)
                waiting[asyncio.ensure_future(next_event(tickets[i], deadline))] = i
            current = {}
            if not waiting:
                break
            ready, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for future in ready:
                current[waiting.pop(future)] = future.result()
    except ApiError as e:  # timed out or failed mid-stream: the status line is sent already
        yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type}})}\n\n"
        return
    finally:
        for future in waiting:
            future.cancel()
        for ticket in tickets:
            ticket.cancel()
    if include_usage:
        usage = s.Usage.of(done[0].prompt_tokens, sum(len(d.result.tokens) for d in done.values()))
        yield chunk(0, s.Delta(), usage=usage, choices=False)
    yield "data: [DONE]\n\n"


def _compression_ratio(text: str) -> float:
    """Whisper's: UTF-8 bytes of ``text`` over their zlib-compressed size."""
    data = text.encode()
    return len(data) / len(zlib.compress(data))


def _transcription(transcript: Transcript, plan: TranscriptionPlan, response_format: str,
                   temperature: float) -> Any:
    result = transcript.result
    text = (result.parsed.text if result.parsed else result.text).strip()
    if response_format == "json":
        return s.Transcription(text=text)
    if response_format == "text":
        return PlainTextResponse(text)
    seeks = [w.start // HOP_LENGTH for w in plan.windows or ()] or [0]  # in mel frames
    segments = [s.Segment(id=i, seek=seek, start=round(seg.start, 3), end=round(seg.end, 3),
                          text=seg.text.strip(), tokens=seg.result.tokens,
                          temperature=temperature, avg_logprob=seg.result.avg_logprob,
                          compression_ratio=_compression_ratio(seg.text.strip()))
                for i, (seg, seek) in enumerate(zip(transcript.segments, seeks))]
    cues = [Cue(seg.start, seg.end, seg.text) for seg in segments]
    if response_format == "srt":
        return PlainTextResponse(format_srt(cues))
    if response_format == "vtt":
        return PlainTextResponse(format_vtt(cues), media_type="text/vtt")
    words = [s.Word(word=w.word, start=round(w.start, 3), end=round(w.end, 3))
             for w in (result.parsed.words if result.parsed else ())]
    return s.VerboseTranscription(language=plan.language, duration=round(plan.duration_s, 3),
                                  text=text, segments=segments, words=words or None)


def _prometheus(metrics: Metrics, batcher: Batcher) -> str:
    stats, engine = batcher.stats, batcher.engine
    encoder_cache = batcher.pipeline.encoder_cache
    lines = ["# TYPE lalm_requests_total counter"]
    lines += [f'lalm_requests_total{{route="{route}",status="{status}"}} {n}'
              for (route, status), n in sorted(metrics.requests.items())]
    lines += ["# TYPE lalm_request_seconds_sum counter"]
    lines += [f'lalm_request_seconds_sum{{route="{route}"}} {t:.6f}'
              for route, t in sorted(metrics.seconds.items())]
    hits = engine.stats.prefix_hits
    lookups = engine.stats.prefix_lookups
    looked = encoder_cache.hits + encoder_cache.misses
    for name, value, kind in (
            ("queue_depth", batcher.depth + engine.waiting, "gauge"),
            ("running_sequences", engine.running, "gauge"),
            ("batches_total", stats.batches, "counter"),
            ("batch_rows_total", stats.rows, "counter"),
            ("engine_steps_total", engine.stats.steps, "counter"),
            ("generated_tokens_total", engine.stats.generated_tokens, "counter"),
            ("tokens_per_second", round(engine.stats.tokens_per_second(), 3), "gauge"),
            ("prefill_tokens_total", engine.stats.prefill_tokens, "counter"),
            ("prefix_reused_tokens_total", engine.stats.reused_tokens, "counter"),
            ("prefix_cache_hits_total", hits, "counter"),
            ("prefix_cache_lookups_total", lookups, "counter"),
            ("prefix_cache_hit_rate", round(hits / lookups, 4) if lookups else 0.0, "gauge"),
            ("encoder_cache_hits_total", encoder_cache.hits, "counter"),
            ("encoder_cache_misses_total", encoder_cache.misses, "counter"),
            ("encoder_cache_hit_rate", round(encoder_cache.hits / looked, 4) if looked
             else 0.0, "gauge"),
            ("encoder_cache_bytes", encoder_cache.bytes, "gauge"),
            ("cancelled_rows_total", stats.cancelled_rows, "counter"),
            ("failed_jobs_total", stats.failed_jobs, "counter"),
            ("expired_jobs_total", stats.expired_jobs, "counter")):
        lines += [f"# TYPE lalm_{name} {kind}", f"lalm_{name} {value}"]
    return "\n".join(lines) + "\n"


M_ARENA_MAX = -8  # glibc mallopt parameter
MALLOC_ARENAS = 2


def _limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas before the request threads start.

    By default glibc gives each thread that allocates its own arena (up to 8 per core); with
    the thread pool decoding request bodies and audio of every size, memory fragments across
    them and the resident size creeps up (measured: +57 MiB over 1,000 mixed requests, still
    growing; with 2 arenas it stays within 4 MiB after warm-up). A no-op off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        pass


def serve(pipeline: Pipeline, config: ServerConfig, host: str = "127.0.0.1",
          port: int = 8000, access_log: bool = False) -> None:
    """Run the server until interrupted (uvicorn, one process: one model in memory)."""
    import uvicorn

    _limit_malloc_arenas()
    uvicorn.run(build_asgi(pipeline, config), host=host, port=port, access_log=access_log,
                log_level="info", timeout_graceful_shutdown=5,
                http=header_timeout_protocol(config.read_timeout_s))
