"""Continuous batching for the server: requests from many clients share the pipeline's engine.

HTTP handlers `submit` jobs (a `lalm.generation.Request` plus its `GenerationOptions`) into a
bounded queue; one worker thread feeds them to the pipeline's `lalm.generation.Engine` as its
slots free up (the jobs taken together are prepared together: `Pipeline.submit`, one encoder
batch) and steps the engine: a job joins the running sequences at the next decode step and
leaves as soon as it ends, so a short answer never waits for a long one (the dynamic batching
this replaces ran every batch until its last row ended). Each sequence gets the tokens it gets
alone (`lalm.generation.engine`); a sampled one draws from its own seed's generator.

Each job has a `Ticket`, the bridge from the worker thread to the handler's event loop: tokens
(for streaming jobs, with the text they release: stop sequences are held back and cut there)
and then `Done` or `Failed`. A bad request never takes others down: a `LalmError` raised while
preparing jobs together (a prompt that encodes to too many tokens, a clip the encoder cannot
take) splits them in halves until the culprit is prepared alone and fails with its own error.
Jobs past their deadline or cancelled by the handler (client gone, timeout) are dropped before
they start; a job cancelled while it runs leaves the engine at the next step (its slot is free
and its row is computed no more).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from lalm.errors import LalmError
from lalm.generation import (
    Event,
    Generation,
    GenerationOptions,
    GenerationResult,
    Pipeline,
    Request,
    TokenLogprob,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    """A streamed token (the stop token included; see `finish_reason`), the text it releases
    ("" while held back; `lalm.generation.engine.TextStream`) and, when the job records them,
    its log-probabilities."""

    token: int
    text: str
    finish_reason: str | None
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class Done:
    """A finished job: its result (text decoded and parsed) and its prompt length in tokens."""

    result: GenerationResult
    prompt_tokens: int


@dataclass(frozen=True)
class Failed:
    """A job that could not run: a `LalmError` (bad input), `TimeoutError` (expired while
    queued) or another exception (a server fault)."""

    error: BaseException


TicketEvent = Token | Done | Failed


class QueueFullError(Exception):
    """The batcher's queue holds ``max_queue`` jobs already."""


class Ticket:
    """Events of one job, delivered from the worker thread to the handler's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: asyncio.Queue[TicketEvent] = asyncio.Queue()
        self.cancelled = False

    def put(self, event: TicketEvent) -> None:
        """Deliver an event (worker thread); dropped once the ticket is cancelled."""
        if self.cancelled:
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody waits any more
            self.cancelled = True

    async def get(self, timeout: float) -> TicketEvent:
        """The next event (handler side).

        Raises:
            TimeoutError: none within ``timeout`` seconds.
        """
        return await asyncio.wait_for(self._events.get(), max(timeout, 0.0))

    def cancel(self) -> None:
        """Stop caring about this job (client gone or timed out); the worker drops it."""
        self.cancelled = True


@dataclass
class Job:
    """One request waiting for or holding an engine slot."""

    request: Request
    options: GenerationOptions
    deadline: float  # time.monotonic() after which the job is not started
    ticket: Ticket
    stream: bool
    top_logprobs: int | None = None
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    generation: Generation | None = None


@dataclass
class BatchStats:
    """Counters for ``/metrics`` (written by the worker thread only)."""

    batches: int = 0  # groups of jobs prepared together and handed to the engine
    rows: int = 0  # jobs handed to the engine
    cancelled_rows: int = 0  # running jobs dropped (client gone, timeout)
    failed_jobs: int = 0
    expired_jobs: int = 0


class Batcher:
    """A bounded queue and one worker thread that runs jobs on the pipeline's engine.

    Args:
        pipeline: the loaded model, tokenizer and prompt family (its `Pipeline.engine` runs
            the jobs; it is given ``max_batch_size`` slots).
        max_batch_size: jobs running at once at most.
        max_queue: jobs waiting at most; `submit` raises `QueueFullError` beyond it.
        batch_wait_s: when the engine is idle and a job arrives, how long to wait for more
            before starting (jobs that arrive together are prepared together).
    """

    def __init__(self, pipeline: Pipeline, max_batch_size: int = 16, max_queue: int = 256,
                 batch_wait_s: float = 0.002) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self.pipeline = pipeline
        self.engine = pipeline.engine
        self.engine.reserve(max_batch_size)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.stats = BatchStats()
        self._pending: deque[Job] = deque()
        self._running: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="lalm-batcher", daemon=True)

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet handed to the engine)."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Jobs handed to the engine and not finished."""
        return len(self._running)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop taking jobs, fail the waiting ones, and let the worker end."""
        with self._cond:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            job.ticket.put(Failed(RuntimeError("the server is shutting down")))
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def submit(self, request: Request, options: GenerationOptions, timeout_s: float,
               stream: bool = False, top_logprobs: int | None = None) -> Ticket:
        """Queue a job; call from the handler's event loop.

        Args:
            request: the prompt (clips already decoded to arrays, so loading cannot fail).
            options: its decoding policy.
            timeout_s: seconds from now after which the job is dropped if it has not started.
            stream: deliver every token as a `Token` event.
            top_logprobs: record token log-probabilities with this many alternatives
                (`Engine.submit`); None: not recorded.

        Returns:
            The job's ticket.

        Raises:
            QueueFullError: ``max_queue`` jobs are already waiting.
        """
        ticket = Ticket(asyncio.get_running_loop())
        job = Job(request, options, time.monotonic() + timeout_s, ticket, stream, top_logprobs)
        with self._cond:
            if self._closed:
                raise QueueFullError("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"{len(self._pending)} requests are already waiting")
            self._pending.append(job)
            self._cond.notify()
        return ticket

    # ------------------------------------------------------------------ worker thread

    def _take(self) -> list[Job] | None:
        """Jobs to start now, as many as there are free slots (None: closed)."""
        with self._cond:
            while not self._pending and not self._running and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if not self._running:  # idle: let a burst arrive, then prepare it together
                end = time.monotonic() + self.batch_wait_s
                while len(self._pending) < self.max_batch_size and not self._closed:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            free = self.max_batch_size - len(self._running)
            jobs = []
            while self._pending and len(jobs) < free:
                jobs.append(self._pending.popleft())
            return jobs

    def _work(self) -> None:
        try:
            while (jobs := self._take()) is not None:
                now = time.monotonic()
                live = []
                for job in jobs:
                    if job.ticket.cancelled:
                        continue
                    if now > job.deadline:
                        self.stats.expired_jobs += 1
                        job.ticket.put(Failed(TimeoutError("the request waited too long in "
                                                           "the queue")))
                        continue
                    live.append(job)
                if live:
                    self._start(live)
                try:
                    self._step()
                except Exception as e:  # a server fault: fail the running jobs, keep serving
                    log.exception("engine step with %d jobs failed", len(self._running))
                    for job in self._running:
                        assert job.generation is not None
                        self.engine.cancel(job.generation)
                        job.ticket.put(Failed(e))
                    self._running.clear()
        finally:
            for job in self._running:
                assert job.generation is not None
                self.engine.cancel(job.generation)
                job.ticket.put(Failed(RuntimeError("the server is shutting down")))
            self._running.clear()

    def _start(self, jobs: Sequence[Job]) -> None:
        """Prepare jobs together and hand them to the engine; on bad input, split until the
        culprit is prepared alone and fails."""
        try:
            gens = self.pipeline.submit(
                [job.request for job in jobs], [job.options for job in jobs],
                [job.top_logprobs for job in jobs],
                [self._forward_tokens(job) if job.stream else None for job in jobs])
        except LalmError as e:
            if len(jobs) == 1:
                self.stats.failed_jobs += 1
                jobs[0].ticket.put(Failed(e))
                return
            half = len(jobs) // 2
            self._start(jobs[:half])
            self._start(jobs[half:])
            return
        except Exception as e:  # a server fault
            log.exception("preparing %d jobs failed", len(jobs))
            for job in jobs:
                job.ticket.put(Failed(e))
            return
        started = time.monotonic()
        for job, gen in zip(jobs, gens):
            job.generation, job.started_at = gen, started
        self.stats.batches += 1
        self.stats.rows += len(jobs)
        self._running += jobs

    @staticmethod
    def _forward_tokens(job: Job):  # type: ignore[no-untyped-def]
        def put(event: Event) -> None:
            job.ticket.put(Token(event.token, event.text, event.finish_reason, event.logprob))
        return put

    def _step(self) -> None:
        """Cancel what the handlers gave up, run one engine step, deliver what finished."""
        for job in self._running:
            assert job.generation is not None
            if job.ticket.cancelled and not job.generation.cancelled:
                self.engine.cancel(job.generation)
                self.stats.cancelled_rows += 1
        self.engine.step()
        now, left = time.monotonic(), []
        for job in self._running:
            gen = job.generation
            assert gen is not None
            if not gen.done:
                left.append(job)
            elif not gen.cancelled:
                gen.result.timings = {"queue": job.started_at - job.queued_at,
                                      "generate": now - job.started_at}
                result = self.pipeline.finish(gen.result, job.request, job.options)
                job.ticket.put(Done(result, gen.prompt_tokens))
        self._running = left
