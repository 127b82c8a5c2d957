"""Dynamic batching: requests from many clients share the model's forward passes.

HTTP handlers `submit` jobs (a `lalm.generation.Request` plus its `GenerationOptions`) into a
bounded queue; one worker thread takes the oldest job and every queued job with equal options
but for the seed (up to ``max_batch_size``), prepares them as one left-padded batch
(`Pipeline.prepare`: the encoder runs once for all their clips) and decodes them together
(`generate_steps`; a sampled row draws from its own seed's generator, so it gets the tokens it
gets alone). A batch runs until its last row finishes; jobs arriving meanwhile form the next
batch.

Each job has a `Ticket`, the bridge from the worker thread to the handler's event loop: tokens
(for streaming jobs) and then `Done` or `Failed`. A bad request never takes a batch down: a
`LalmError` raised before the first token (a prompt that encodes to too many tokens, a clip the
encoder cannot take) splits the batch in halves until the culprit runs alone and fails with
its own error, and the others complete. Jobs past their deadline or cancelled by the handler
(client gone, timeout) are dropped before they run; a job cancelled while its batch runs is
dropped from the batch at the next step (its row is computed no more), and a batch whose jobs
are all cancelled ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from lalm.errors import LalmError
from lalm.generation import GenerationOptions, GenerationResult, Pipeline, Request, generate_steps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Token:
    """A streamed token (the row's stop token included; see `finish_reason`)."""

    token: int
    finish_reason: str | None


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


Event = Token | Done | Failed


class QueueFullError(Exception):
    """The batcher's queue holds ``max_queue`` jobs already."""


class Ticket:
    """Events of one job, delivered from the worker thread to the handler's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False

    def put(self, event: Event) -> None:
        """Deliver an event (worker thread); dropped once the ticket is cancelled."""
        if self.cancelled:
            return
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody waits any more
            self.cancelled = True

    async def get(self, timeout: float) -> Event:
        """The next event (handler side).

        Raises:
            TimeoutError: none within ``timeout`` seconds.
        """
        return await asyncio.wait_for(self._events.get(), max(timeout, 0.0))

    def cancel(self) -> None:
        """Stop caring about this job (client gone or timed out); the worker skips it."""
        self.cancelled = True


@dataclass
class Job:
    """One request waiting for or in a batch."""

    request: Request
    options: GenerationOptions
    deadline: float  # time.monotonic() after which the job is not started
    ticket: Ticket
    stream: bool
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def batch_key(self) -> GenerationOptions:
        """Jobs with equal keys share a batch: their options but for the seed (per row)."""
        return replace(self.options, seed=None)


@dataclass
class BatchStats:
    """Counters for ``/metrics`` (written by the worker thread only)."""

    batches: int = 0
    rows: int = 0
    generated_tokens: int = 0  # row-steps computed (a dropped row costs no more)
    cancelled_rows: int = 0  # rows dropped from a running batch (client gone, timeout)
    failed_jobs: int = 0
    expired_jobs: int = 0


class Batcher:
    """A bounded queue and one worker thread that runs jobs in shared batches.

    Args:
        pipeline: the loaded model, tokenizer and prompt family.
        max_batch_size: jobs per batch at most.
        max_queue: jobs waiting at most; `submit` raises `QueueFullError` beyond it.
        batch_wait_s: after the first job arrives, how long to wait for more before starting
            a batch smaller than ``max_batch_size``.
    """

    def __init__(self, pipeline: Pipeline, max_batch_size: int = 16, max_queue: int = 256,
                 batch_wait_s: float = 0.002) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self.pipeline = pipeline
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.stats = BatchStats()
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="lalm-batcher", daemon=True)

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet in a batch)."""
        return len(self._pending)

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
               stream: bool = False) -> Ticket:
        """Queue a job; call from the handler's event loop.

        Args:
            request: the prompt (clips already decoded to arrays, so loading cannot fail).
            options: its decoding policy (jobs batch together when their options are equal).
            timeout_s: seconds from now after which the job is dropped if it has not started.
            stream: deliver every token as a `Token` event.

        Returns:
            The job's ticket.

        Raises:
            QueueFullError: ``max_queue`` jobs are already waiting.
        """
        ticket = Ticket(asyncio.get_running_loop())
        job = Job(request, options, time.monotonic() + timeout_s, ticket, stream)
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
        """The next batch: the oldest job and queued jobs with its `Job.batch_key` (None:
        closed)."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            end = time.monotonic() + self.batch_wait_s
            while len(self._pending) < self.max_batch_size and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if not self._pending:
                return None
            first = self._pending.popleft()
            batch, rest = [first], deque()
            while self._pending:
                job = self._pending.popleft()
                if len(batch) < self.max_batch_size and job.batch_key == first.batch_key:
                    batch.append(job)
                else:
                    rest.append(job)
            self._pending = rest
            return batch

    def _work(self) -> None:
        while (jobs := self._take()) is not None:
            now = time.monotonic()
            live = []
            for job in jobs:
                if job.ticket.cancelled:
                    continue
                if now > job.deadline:
                    self.stats.expired_jobs += 1
                    job.ticket.put(Failed(TimeoutError("the request waited too long in the "
                                                       "queue")))
                    continue
                live.append(job)
            if not live:
                continue
            try:
                self._run(live)
            except Exception as e:  # a server fault: fail these jobs, keep serving
                log.exception("batch of %d jobs failed", len(live))
                for job in live:
                    job.ticket.put(Failed(e))

    def _run(self, jobs: Sequence[Job]) -> None:
        """Run jobs as one batch; on bad input, split until the culprit runs alone."""
        try:
            self._generate(jobs)
        except LalmError as e:
            if len(jobs) == 1:
                self.stats.failed_jobs += 1
                jobs[0].ticket.put(Failed(e))
                return
            half = len(jobs) // 2
            self._run(jobs[:half])
            self._run(jobs[half:])

    def _generate(self, jobs: Sequence[Job]) -> None:
        """Prepare and decode one batch. A `LalmError` can only come before any token."""
        pipeline, options = self.pipeline, jobs[0].batch_key
        t0 = time.monotonic()
        prompt = pipeline.prepare([job.request for job in jobs])
        stop_ids = pipeline.stop_ids(options)

        def cancelled(row: int) -> bool:  # asked once per step for each running row
            gone = jobs[row].ticket.cancelled
            self.stats.cancelled_rows += gone
            return gone

        steps = generate_steps(pipeline.model, prompt, options, stop_ids,
                               pipeline.tokenizer.decode, [job.options.seed for job in jobs],
                               cancelled)
        step = next(steps)  # prefill + first token: bad input has shown by now
        t1 = time.monotonic()
        self.stats.batches += 1
        self.stats.rows += len(jobs)
        for step in itertools.chain([step], steps):
            for job, token, result in zip(jobs, step.tokens, step.results):
                if token is not None:
                    self.stats.generated_tokens += 1
                    if job.stream:
                        job.ticket.put(Token(token, result.finish_reason))
            results = step.results
        t2 = time.monotonic()
        for job, result, n_prompt in zip(jobs, results, prompt.lengths.tolist()):
            if job.ticket.cancelled:
                continue
            result.timings = {"queue": t0 - job.queued_at, "prefill": t1 - t0,
                              "decode": t2 - t1}
            job.ticket.put(Done(pipeline.finish(result, job.request, job.options), n_prompt))
