"""One scheduler for the box: every model's units of work wait here for their turn.

    scheduler = Scheduler.for_host()                  # slots: the usable cores, the GPU
    scheduler.set("vit", Schedule(share=3, slots=1))  # the registry, as each model loads
    gate = scheduler.gate("vit")                      # the model's own handle
    with gate.turn(expired, more) as run:             # on the model's worker thread
        if run:
            outputs = session.run(batch)              # one unit: its busy time is measured
        else:
            gate.shed(len(requests))                  # expired() while it waited: dropped

The units run on the models' own worker threads (an LLM's generation workers, the
continuous batcher's loop thread, a vision batcher's workers), so the waiting is
thread-based: one lock and condition, which the policy (fair_queue.py) behind it
decides for. A unit asks right before it runs and releases its slots right after,
so what the policy charges is the measured time the model held them.

`expired` (the request's StopCondition: its deadline passed or its client left; for a
batch, that nobody in it is still waiting) is checked while the unit waits: one that
expires gives its place up and runs nothing. The caller counts the requests it drops
(`shed`), so /metrics shows, per model, the busy seconds, the seconds its units
waited for a turn and the requests shed. `more`, asked as a unit ends, says whether
the model has work ready for its next one (requests waiting, streams going on): the
policy then keeps its place for the moment its worker needs to ask (fair_queue.py).

What a model's requests cost outside its units (gRPC, parsing, decoding images, the
answers: CPU seconds on the event loop, measured per call by request_cpu.py) is
charged to it as well (`charge`), so a model of many cheap requests pays for them.

Alone on the box (tests, `e2edge generate` in-process), a model's gate is UNGATED:
its units run at once and nothing is counted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from runtime.backends.onnxruntime_backend import GPU_PROVIDERS
from runtime.host_facts import usable_cores
from runtime.server.core.fair_queue import FairQueue, Schedule, Usage
from runtime.step_gate import UNGATED, StepGate

__all__ = ["UNGATED", "ModelGate", "Scheduler", "StepGate", "host_capacity", "placement"]

# A waiting unit re-checks `expired` this often: a StopCondition has no way to wake
# the condition when its deadline passes or its client leaves.
EXPIRY_POLL_S = 0.02


def host_capacity() -> dict[str, int]:
    """The box's execution slots: one per usable core, and the GPU as one."""
    return {"cpu": usable_cores(), "gpu": 1}


def placement(backend_name: str, providers: list[str], threads: int) -> tuple[str, int]:
    """(resource, slots) a model holds while it runs: the GPU when its backend or first
    provider runs there, else `threads` cores (0: every core, fitted by the policy)."""
    if backend_name == "tensorrt" or (providers and providers[0] in GPU_PROVIDERS):
        return "gpu", 1
    return "cpu", threads or usable_cores()


class Scheduler:
    """The policy behind one lock; worker threads wait on its condition for their turn."""

    def __init__(self, capacity: Mapping[str, int],
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._queue = FairQueue(capacity)
        self._changed = threading.Condition()

    @classmethod
    def for_host(cls) -> Scheduler:
        return cls(host_capacity())

    @property
    def capacity(self) -> dict[str, int]:
        return dict(self._queue.capacity)

    def set(self, name: str, schedule: Schedule) -> None:
        """Add a model or change its share, priority or slots (SIGHUP reload)."""
        with self._changed:
            self._queue.set(name, schedule, self.clock())
            self._grant()

    def schedules(self) -> dict[str, Schedule]:
        with self._changed:
            return {name: m.schedule for name, m in self._queue.models.items()}

    def usage(self) -> dict[str, Usage]:
        with self._changed:
            return self._queue.usage(self.clock())

    def gate(self, name: str) -> ModelGate:
        return ModelGate(self, name)

    # ---- on the worker threads --------------------------------------------------------
    def acquire(self, name: str, expired: Callable[[], bool] | None = None) -> bool:
        """Wait for `name`'s turn: True to run (then release()), False when `expired()`
        turned true first."""
        with self._changed:
            ticket = self._queue.want(name, self.clock())
            self._grant()
            while not ticket.granted:
                if expired is not None and expired():
                    self._queue.withdraw(ticket, self.clock())
                    self._grant()  # it may have been the head that held the others back
                    return False
                self._changed.wait(self._wait_s(expired is not None))
                self._grant()  # time passed: slots kept for a model may have lapsed
            return True

    def release(self, name: str, more: bool = False) -> None:
        """`name`'s unit ended; `more`: it has work ready for its next one."""
        with self._changed:
            self._queue.done(name, self.clock(), more)
            self._grant()

    def shed(self, name: str, requests: int = 1) -> None:
        with self._changed:
            self._queue.shed(name, requests)

    def charge(self, name: str, cpu_s: float) -> None:
        """CPU seconds `name`'s requests cost outside its units (request_cpu.py)."""
        with self._changed:
            self._queue.charge(name, cpu_s, self.clock())
            self._grant()  # its place in the order moved back: another may go first

    def _grant(self) -> None:
        if self._queue.grant(self.clock()):
            self._changed.notify_all()

    def _wait_s(self, polls_expiry: bool) -> float | None:
        """How long a waiter may sleep before it must look again (None: until woken)."""
        now = self.clock()
        change = self._queue.next_change(now)
        waits = [EXPIRY_POLL_S] if polls_expiry else []
        if change is not None:
            waits.append(max(0.0, change - now))
        return min(waits, default=None)


class ModelGate:
    """One model's StepGate on the box's scheduler."""

    def __init__(self, scheduler: Scheduler, name: str):
        self.scheduler = scheduler
        self.name = name

    @contextlib.contextmanager
    def turn(self, expired: Callable[[], bool] | None = None,
             more: Callable[[], bool] | None = None) -> Iterator[bool]:
        if not self.scheduler.acquire(self.name, expired):
            yield False
            return
        try:
            yield True
        finally:
            self.scheduler.release(self.name, more is not None and more())

    def shed(self, requests: int = 1) -> None:
        self.scheduler.shed(self.name, requests)
