"""Dynamic batching for one model: requests that arrive close together run as one batch.

    batcher = Batcher("retina", model.probabilities, executor, BatchingConfig(16, 5.0))
    result = await batcher.submit(pixels)    # (n, C, S, S) -> result.outputs (n, K)
    batcher.close()                          # when the model is retired

The rule:
- Requests wait in arrival order (FIFO). A batch starts when a worker is free and
  either the waiting requests hold `max_batch` images or the oldest of them has
  waited `max_delay_ms`; requests that queued while every worker was busy have
  usually waited that long already, so under load a batch starts as soon as a worker
  frees up, and the delay is only paid when the model is idle.
- A batch takes requests from the front while their images fit in `max_batch`; a
  request is never split, and one with more images than `max_batch` runs alone.
- The model's workers (`max_concurrent` threads of its executor) take the batches
  themselves: a worker that finishes one takes the next from the queue at once, on
  its own thread. The event loop only queues requests and hands the answers back,
  so a loop busy with other clients' calls never keeps the model waiting. (When the
  loop started each batch, the model sat idle between batches until the loop came
  round to it: on a 2-core machine serving 32 clients that gap was 20 % of the time.)
  Each batch's rows are split back in order: each request gets exactly its own rows,
  or the batch's exception.
- At most `max_queue` requests wait beyond what the free workers could take at once;
  one more is refused with QueueFull (RESOURCE_EXHAUSTED), as Admission does.
- When a batch is due, its worker first waits for the model's turn on the box (`gate`,
  scheduler.py: other models share the cores), then takes the batch from the front
  of the queue: requests that arrived meanwhile join it. As the batch ends it tells
  the scheduler whether more work is ready (requests wait, or the batch was full).
- A request whose client leaves (or whose deadline passes) while it waits is dropped
  from the queue and counted as shed; one whose batch already runs is computed and
  its rows discarded.
- A worker with nothing to do for IDLE_EXIT_S gives its thread back (the next request
  starts one again); `close` stops them at once.

`max_batch` 1 turns batching off through the same path: every request runs alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.server.core.retry_pushback import FreeingPace
from runtime.server.core.scheduler import UNGATED, StepGate
from runtime.server.guard.errors import QueueFull
from runtime.vision.serving_config import BatchingConfig

# Given the tags of a batch's requests, a context manager entered on the worker
# thread around the model run (the daemon measures each request's energy with it).
RunWindow = Callable[[Sequence[Any]], contextlib.AbstractContextManager]

IDLE_EXIT_S = 1.0  # a worker idle this long returns its thread to the executor


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
    future: asyncio.Future[BatchResult] = field(repr=False)  # of the submitting event loop

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
        gate: StepGate = UNGATED,
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
        self.gate = gate  # where each batch waits for the model's turn on the box
        # A batch taken after refusals frees places under load: how often, the refusals'
        # retry hint.
        self.pace = FreeingPace()
        self._refused_since_take = False
        self.active = 0  # requests in running batches
        self.batches = 0  # batches started so far
        # Shared by the event loop and the workers: everything below, under _changed.
        self._changed = threading.Condition()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._waiting_rows = 0
        self._workers = 0  # worker loops alive
        self._free = 0  # of them, waiting for requests (not running a batch)
        self._full = False  # the latest batch taken held max_batch rows
        self._closed = False

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
        job = _Job(inputs, tag, time.monotonic(), asyncio.get_running_loop().create_future())
        with self._changed:
            if self._closed:
                raise RuntimeError(f"model {self.name!r} is shut down")
            # What the free workers could start at once does not count as waiting.
            running = self._workers - self._free
            capacity = self.max_queue + (self.max_concurrent - running) * self.max_batch
            if len(self._waiting) >= capacity:
                self._refused_since_take = True
                raise QueueFull(
                    f"model {self.name!r} is busy: {self.active} requests in batches and "
                    f"{len(self._waiting)} queued (max_queue {self.max_queue}); retry later",
                    self.pace.retry_after_s(),
                )
            if self._free <= len(self._waiting) and self._workers < self.max_concurrent:
                self.executor.submit(self._work)  # RuntimeError once the executor is shut
                self._workers += 1
                self._free += 1
            self._waiting.append(job)
            self._waiting_rows += job.rows
            self._changed.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._changed:
                dropped = any(waiting is job for waiting in self._waiting)  # not in a batch
                if dropped:
                    self._waiting.remove(job)
                    self._waiting_rows -= job.rows
            if dropped:
                self.gate.shed(1)
            raise

    def close(self) -> None:
        """Stop the workers once their running batches end; waiting requests fail."""
        with self._changed:
            self._closed = True
            left = list(self._waiting)
            self._waiting.clear()
            self._waiting_rows = 0
            self._changed.notify_all()
        self._settle(left, None, RuntimeError(f"model {self.name!r} is shut down"))

    # ---- on a worker thread ----------------------------------------------------------
    def _work(self) -> None:
        """One worker: wait for a batch to be due and for the model's turn, take the
        batch, run it, hand its answers back; repeat."""
        while self._batch_due():
            with self.gate.turn(self._nothing_waiting, self._more_follows) as run:
                batch = self._take() if run else []
                result = self._timed_run(batch) if batch else (None, None)
            if batch:
                self._settle(batch, *result)
            with self._changed:
                self.active -= len(batch)
                self._free += 1

    def _timed_run(self, batch: list[_Job]) -> tuple[tuple | None, BaseException | None]:
        """(outputs, started, finished), or the exception the batch's requests get."""
        started = time.monotonic()
        try:
            outputs = self._run(batch)
        except Exception as e:  # noqa: BLE001 - the batch's requests get the error
            return None, e
        return (outputs, started, time.monotonic()), None

    def _more_follows(self) -> bool:
        """As a batch ends: does the model have work ready for the next? Requests wait, or
        the latest batch was full: the model is saturated, and the clients just answered
        are about to send their next requests (a camera's single frame says no)."""
        return bool(self._waiting) or self._full

    def _nothing_waiting(self) -> bool:
        """A due batch waiting for its turn may give it up: its requests left, or closing."""
        return self._closed or not self._waiting

    def _batch_due(self) -> bool:
        """Wait until a batch is due (see the rule above); False: this worker stops."""
        with self._changed:
            while not self._closed:
                if not self._waiting:
                    if not self._changed.wait(IDLE_EXIT_S) and not self._waiting:
                        break
                    continue
                if self._waiting_rows < self.max_batch:
                    wait_s = self._waiting[0].submitted_at + self.delay_s - time.monotonic()
                    if wait_s > 0:
                        self._changed.wait(wait_s)
                        continue
                self._free -= 1
                return True
            self._workers -= 1
            self._free -= 1
            return False

    def _take(self) -> list[_Job]:
        """Requests from the front while their rows fit in max_batch (at least one, unless
        other workers took them all); those whose client already left are shed."""
        with self._changed:
            batch: list[_Job] = []
            rows = shed = 0
            while self._waiting and (not batch or rows + self._waiting[0].rows <= self.max_batch):
                job = self._waiting.popleft()
                self._waiting_rows -= job.rows
                if job.future.done():  # cancelled on its loop; its handler is gone
                    shed += 1
                    continue
                rows += job.rows
                batch.append(job)
            self.active += len(batch)
            self.batches += bool(batch)
            self._full = rows >= self.max_batch
            self.pace.freed(time.monotonic(), saturated=self._refused_since_take)
            self._refused_since_take = False
        if shed:
            self.gate.shed(shed)
        return batch

    def _run(self, batch: list[_Job]) -> np.ndarray:
        inputs = [job.inputs for job in batch]
        stacked = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)  # (B, ...)
        window = (self.run_window([job.tag for job in batch]) if self.run_window is not None
                  else contextlib.nullcontext())
        with window:
            outputs = self.run_batch(stacked)
        if len(outputs) != len(stacked):
            raise RuntimeError(f"the model returned {len(outputs)} rows for {len(stacked)}")
        return outputs

    def _settle(self, batch: list[_Job], done: tuple | None, error: BaseException | None) -> None:
        """Hand each job its own rows of the batch output (or the error) on its event loop."""
        answers: dict[asyncio.AbstractEventLoop, list] = collections.defaultdict(list)
        offset = 0
        for job in batch:
            if done is None:
                answer: BatchResult | BaseException = error
            else:
                outputs, started, finished = done
                answer = BatchResult(
                    outputs=outputs[offset:offset + job.rows], batch_size=len(outputs),
                    queue_s=started - job.submitted_at, run_s=finished - started,
                    started_at=started, finished_at=finished,
                )
            offset += job.rows
            answers[job.future.get_loop()].append((job.future, answer))
        for loop, futures in answers.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_answer, futures)


def _answer(futures: list[tuple[asyncio.Future, BatchResult | BaseException]]) -> None:
    """On the event loop: set each request's future, unless its client left meanwhile."""
    for future, answer in futures:
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
