"""What a model's requests cost the daemon outside its units of work, charged to its share.

The scheduler measures a model's units (decode steps, vision batches) while they hold
their slots, but its requests cost the box more than that: gRPC reading and writing
their messages, parsing, decoding and preprocessing images, building the answers,
logging. On a small board that runs on the cores the models run on: measured on two
cores, 500-600 Classify calls a second took about 60 % of one core on the event loop,
and an LLM taking turns with that ViT decoded its steps in 19 ms against 15 alone. A
share of the box's execution time that left this out would give a model of many cheap
requests more than its share, at the others' cost.

How it is measured: every task on the daemon's event loop runs its coroutine through a
meter that reads the thread's CPU clock around each step (gRPC runs each call as one
task: the handler, the (de)serialisation and the writes it awaits). A handler names the
model its call is for as soon as it knows it (`bill`; the registry does it when a call
asks for a ready model), and the call's CPU seconds go to that model's account as they
add up (every FLUSH_S of them, and when the call ends), including those spent before
the model was known (reading and parsing the request). Decoding on the daemon's decode
threads is added to the call that asked for it (`add`). What runs outside any call's
task (gRPC's completion-queue callbacks, the workers' answers handed back) is charged
to nobody. A stream that carries requests for several models (ClassifyStream) bills
each part as it goes: reading a request and writing its answer to the model it names,
and each request runs as a task of its own, billed as any call.

    restore = install(loop)                  # the daemon, once its loop runs
    bill(scheduler.charge, "vit")            # in a call's handler: its model
    restore()                                # at stop: the loop's previous task factory
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("e2edge.server")

_thread_time = time.thread_time  # this thread's CPU seconds: about 0.5 us a read

# A long call (a stream) hands its account over each time this many CPU seconds add up.
FLUSH_S = 0.005

Charge = Callable[[str, float], None]  # (model, cpu seconds)
T = TypeVar("T")


class CallCost:
    """One task's CPU seconds on the loop, and the model they are charged to."""

    __slots__ = ("charge", "model", "pending")

    def __init__(self) -> None:
        self.charge: Charge | None = None
        self.model = ""
        self.pending = 0.0  # measured, not yet handed to `charge`

    def add(self, seconds: float) -> None:
        self.pending += seconds
        if self.pending >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.charge is not None and self.pending > 0:
            try:
                self.charge(self.model, self.pending)
            except Exception:  # noqa: BLE001 - accounting must never fail the call itself
                log.exception("charging %s's request handling failed; this call goes "
                              "uncharged", self.model)
                self.charge = None
            self.pending = 0.0


_current: contextvars.ContextVar[CallCost | None] = contextvars.ContextVar(
    "e2edge_call_cost", default=None)


def bill(charge: Charge, model: str) -> None:
    """Charge the running call's CPU time, so far and from now on, to `model`.
    Outside a metered task (tests calling a handler directly) it does nothing."""
    cost = _current.get()
    if cost is None or (cost.charge == charge and cost.model == model):
        return
    cost.flush()  # a call that switches models (a stream's items) pays each its part
    cost.charge, cost.model = charge, model


def add(seconds: float) -> None:
    """Add CPU seconds spent for the running call on another thread (its image decode)."""
    cost = _current.get()
    if cost is not None:
        cost.add(seconds)


class MeteredCall(Coroutine):
    """A task's coroutine, stepped as it is, with the thread's CPU time of each step
    added to the call's cost. Asyncio's Task drives any Coroutine through send/throw."""

    __slots__ = ("_coro", "_cost", "_started")

    def __init__(self, coro: Coroutine) -> None:
        self._coro = coro
        self._cost = CallCost()
        self._started = False

    def send(self, value: Any) -> Any:
        return self._step(self._coro.send, value)

    def throw(self, *args: Any) -> Any:
        return self._step(self._coro.throw, *args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def __getattr__(self, name: str) -> Any:  # cr_frame, cr_code, __qualname__: a task's repr
        return getattr(self._coro, name)

    def _step(self, resume: Callable[..., Any], *args: Any) -> Any:
        """One step of the call (every step of every call: one clock read each side)."""
        if not self._started:  # the first step runs in the task's own context
            _current.set(self._cost)
            self._started = True
        started = _thread_time()
        try:
            result = resume(*args)
        except BaseException:  # the call ended (StopIteration) or failed: settle its account
            self._cost.add(_thread_time() - started)
            self._cost.flush()
            raise
        self._cost.add(_thread_time() - started)
        return result


def timed(work: Callable[..., T], *args: Any) -> tuple[T, float]:
    """`work(*args)` and the CPU seconds it took on this thread: run on another thread
    for a call, its seconds go to the call with `add`."""
    started = _thread_time()
    result = work(*args)
    return result, _thread_time() - started


def install(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Meter every task created on `loop` from now on; returns what restores the loop's
    previous task factory (nothing to restore when the loop is metered already: a second
    daemon on the same loop)."""
    previous = loop.get_task_factory()
    if getattr(previous, "meters_calls", False):
        return lambda: None

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, /, **kwargs: Any) -> asyncio.Future:
        metered = MeteredCall(coro)
        if previous is not None:
            return previous(loop, metered, **kwargs)
        return asyncio.Task(metered, loop=loop, **kwargs)

    factory.meters_calls = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)
    return lambda: loop.set_task_factory(previous)
