"""Admission control for one model: a few generation slots and a bounded queue.

`max_concurrent` requests run at once; up to `max_queue` more wait for a slot in
arrival order (FIFO); any request beyond that is refused at once with QueueFull
(RESOURCE_EXHAUSTED), so a client learns immediately that the device is saturated
instead of waiting behind an unbounded backlog.

Everything runs on the daemon's event loop, so no lock is needed: a slot is handed
from a finishing request straight to the first waiter, and a waiter that gives up
(its client cancelled or its deadline passed) leaves the queue without taking a slot,
counted by `on_shed` (the model's count of requests shed before they ran).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from runtime.server.core.retry_pushback import FreeingPace
from runtime.server.guard.errors import QueueFull


class Admission:
    def __init__(self, model: str, max_concurrent: int, max_queue: int,
                 on_shed: Callable[[int], None] | None = None):
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError(f"max_concurrent must be >= 1 and max_queue >= 0, got "
                             f"{max_concurrent}, {max_queue}")
        self.model = model
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.active = 0
        self.on_shed = on_shed
        self.pace = FreeingPace()  # how often a place frees under load: the retry hint
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed; QueueFull when the queue is full."""
        if self.active < self.max_concurrent and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(
                f"model {self.model!r} is busy: {self.active} running and {len(self._waiters)} "
                f"queued (max_queue {self.max_queue}); retry later",
                self.pace.retry_after_s(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            elif waiter in self._waiters:  # release() may have dropped it already
                self._waiters.remove(waiter)
            if self.on_shed is not None:
                self.on_shed(1)
            raise

    def release(self) -> None:
        """Give the slot to the first waiter, or free it."""
        self.pace.freed(time.monotonic(), saturated=bool(self._waiters))
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; `active` stays the same
                return
        self.active -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
