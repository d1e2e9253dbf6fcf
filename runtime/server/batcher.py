"""Dynamic batching for one model: requests that arrive close together run as one batch.

    batcher = Batcher("retina", model.probabilities, executor, BatchingConfig(16, 5.0))
    result = await batcher.submit(pixels)    # (n, C, S, S) -> result.outputs (n, K)

The rule, all on the daemon's event loop (no lock needed):
- Requests wait in arrival order (FIFO). A batch starts when a worker is free and
  either the waiting requests hold `max_batch` images or the oldest of them has
  waited `max_delay_ms`; requests that queued while every worker was busy have
  usually waited that long already, so under load a batch starts as soon as a worker
  frees up, and the delay is only paid when the model is idle.
- A batch takes requests from the front while their images fit in `max_batch`; a
  request is never split, and one with more images than `max_batch` runs alone.
- The batch runs on one of the model's worker threads (`max_concurrent` of them),
  never on the event loop. Its rows are split back in order: each request gets
  exactly its own rows, or the batch's exception.
- While every worker is busy, one full batch more (`max_batch` images) is handed to
  the workers' queue at once, so it starts the moment a worker frees up. Otherwise
  the next batch could only start after the event loop had seen the last one finish,
  and on a busy daemon (the loop serving every client's calls) the model sat idle in
  between: measured, that gap cost 15-20 % of the throughput on a 2-core machine.
  Only full batches go ahead this way, so the batches stay as large as before.
- At most `max_queue` requests wait beyond what the free workers could take at once
  (a batch handed ahead counts as waiting); one more is refused with QueueFull
  (RESOURCE_EXHAUSTED), as Admission does.
- A request whose client leaves while it waits is dropped from the queue; one whose
  batch already runs is computed and its rows discarded.

`max_batch` 1 turns batching off through the same path: every request runs alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.server.errors import QueueFull
from runtime.vision.serving_config import BatchingConfig

# Given the tags of a batch's requests, a context manager entered on the worker
# thread around the model run (the daemon measures each request's energy with it).
RunWindow = Callable[[Sequence[Any]], contextlib.AbstractContextManager]

HANDED_AHEAD = 1  # full batches given to the busy workers' queue, to start without a gap


@dataclass(frozen=True)
class BatchResult:
    outputs: np.ndarray  # (n, ...) this request's rows of the batch output
    batch_size: int  # rows in the whole batch (this request's and the others')
    queue_s: float  # submitted -> its batch started on a worker
    run_s: float  # the batch's run on the worker
    started_at: float  # time.monotonic() of the batch's start
    finished_at: float


@dataclass(eq=False)  # compared by identity: the queue removes a job by `is`
class _Job:
    inputs: np.ndarray  # (n, ...) one request's rows
    tag: Any
    submitted_at: float
    future: asyncio.Future[BatchResult] = field(repr=False)

    @property
    def rows(self) -> int:
        return len(self.inputs)


class Batcher:
    def __init__(
        self,
        name: str,
        run_batch: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        config: BatchingConfig,
        max_concurrent: int = 1,
        max_queue: int = 16,
        run_window: RunWindow | None = None,
    ):
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError(f"max_concurrent must be >= 1 and max_queue >= 0, got "
                             f"{max_concurrent}, {max_queue}")
        self.name = name
        self.run_batch = run_batch  # (B, ...) -> (B, ...), called on a worker thread
        self.executor = executor
        self.max_batch = config.max_batch
        self.delay_s = config.max_delay_ms / 1e3
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.run_window = run_window
        self.active = 0  # requests in batches handed to the workers
        self.batches = 0  # batches started so far
        self._running = 0  # batches handed to the workers (running or next in line)
        self._waiting: collections.deque[_Job] = collections.deque()
        self._waiting_rows = 0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return len(self._waiting)

    async def submit(self, inputs: np.ndarray, tag: Any = None) -> BatchResult:
        """Run `inputs` (n, ...) in a batch; its n output rows, or the batch's exception.

        `tag` is handed to `run_window` (the daemon passes the request's energy record).
        """
        if len(inputs) < 1:
            raise ValueError("a request needs at least one row")
        # What the free workers could start at once does not count as waiting; a batch
        # handed ahead does (it makes the term below negative).
        capacity = self.max_queue + (self.max_concurrent - self._running) * self.max_batch
        if len(self._waiting) >= capacity:
            raise QueueFull(
                f"model {self.name!r} is busy: {self.active} requests in batches and "
                f"{len(self._waiting)} queued (max_queue {self.max_queue}); retry later"
            )
        loop = asyncio.get_running_loop()
        job = _Job(inputs, tag, time.monotonic(), loop.create_future())
        self._waiting.append(job)
        self._waiting_rows += job.rows
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:
            if any(waiting is job for waiting in self._waiting):  # not in a batch yet
                self._waiting.remove(job)
                self._waiting_rows -= job.rows
            raise

    def _dispatch(self) -> None:
        """Start every batch that may start now; arm the timer for one still gathering."""
        while self._waiting:
            if self._running >= self.max_concurrent:  # every worker busy
                if (self._running >= self.max_concurrent + HANDED_AHEAD
                        or self._waiting_rows < self.max_batch):
                    return
            elif self._waiting_rows < self.max_batch:
                wait_s = self._waiting[0].submitted_at + self.delay_s - time.monotonic()
                if wait_s > 0:
                    # An armed timer is never later than this one: it is for an older job.
                    if self._timer is None:
                        self._timer = asyncio.get_running_loop().call_later(wait_s, self._wake)
                    return
            self._start(self._take())

    def _wake(self) -> None:
        self._timer = None
        self._dispatch()

    def _take(self) -> list[_Job]:
        """Requests from the front while their rows fit in max_batch (at least one)."""
        batch = [self._waiting.popleft()]
        rows = batch[0].rows
        while self._waiting and rows + self._waiting[0].rows <= self.max_batch:
            rows += self._waiting[0].rows
            batch.append(self._waiting.popleft())
        self._waiting_rows -= rows
        return batch

    def _start(self, batch: list[_Job]) -> None:
        self._running += 1
        self.active += len(batch)
        self.batches += 1
        inputs = [job.inputs for job in batch]
        tags = [job.tag for job in batch]
        loop = asyncio.get_running_loop()
        try:
            worker = loop.run_in_executor(self.executor, self._run, inputs, tags)
        except RuntimeError as e:  # the executor is shut down: the daemon is stopping
            self._finish_all(batch, e)
            return
        worker.add_done_callback(lambda done: self._finished(batch, done))

    def _run(self, inputs: list[np.ndarray], tags: list[Any]) -> tuple[np.ndarray, float, float]:
        """On a worker thread: (outputs (B, ...), started, finished)."""
        started = time.monotonic()
        stacked = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)  # (B, ...)
        window = self.run_window(tags) if self.run_window is not None else contextlib.nullcontext()
        with window:
            outputs = self.run_batch(stacked)
        if len(outputs) != len(stacked):
            raise RuntimeError(f"the model returned {len(outputs)} rows for {len(stacked)}")
        return outputs, started, time.monotonic()

    def _finished(self, batch: list[_Job], worker: asyncio.Future) -> None:
        if worker.cancelled():  # nobody cancels it but a loop shutting down
            self._release(batch)
            for job in batch:
                job.future.cancel()
        elif worker.exception() is not None:
            self._finish_all(batch, worker.exception())
        else:
            outputs, started, finished = worker.result()
            self._release(batch)
            offset = 0
            for job in batch:
                rows = outputs[offset:offset + job.rows]
                offset += job.rows
                if not job.future.done():  # its client may have left meanwhile
                    job.future.set_result(BatchResult(
                        outputs=rows, batch_size=len(outputs),
                        queue_s=started - job.submitted_at, run_s=finished - started,
                        started_at=started, finished_at=finished,
                    ))
        self._dispatch()

    def _finish_all(self, batch: list[_Job], error: BaseException) -> None:
        self._release(batch)
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)

    def _release(self, batch: list[_Job]) -> None:
        self._running -= 1
        self.active -= len(batch)
