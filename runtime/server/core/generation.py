"""One LLM request's generation on its model's worker thread, and when it must stop.

Both APIs that generate (EdgeRuntime's Generate, KServe's ModelInfer and
ModelStreamInfer) run a request the same way:

1. It waits for one of the model's slots (admission: a full queue is refused at once).
2. The engine's generator runs on one of the model's worker threads; each event is
   handed to the event loop with `call_soon_threadsafe` into an asyncio.Queue, and
   the handler yields it to the client as soon as it arrives: the first token is on
   the wire while the rest are still being computed.
3. The slot is freed when the worker finishes, not when the last message is sent, so
   a client that reads slowly holds buffered messages, never a slot.
4. The worker asks its StopCondition before every decode step: the RPC ending (the
   client cancelling, its deadline, the handler ending for any reason) or the deadline
   passing stop it within one step. A deadline ends the request with
   DEADLINE_EXCEEDED, never with a final message that would look like a complete answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from runtime.llm.engine import GenerationEvent, Prompt
from runtime.llm.sampling import SamplingParams
from runtime.power.energy import Span
from runtime.server.core.registry import ModelEntry
from runtime.server.energy import EnergyAccounting
from runtime.server.guard.errors import DeadlineExceeded


def call_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on the time.monotonic() clock; None when it has none."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def ended_status(deadline: float | None) -> str:
    """The status of a call that ended under its handler: its deadline, or the client left."""
    past_deadline = deadline is not None and time.monotonic() >= deadline
    return "DEADLINE_EXCEEDED" if past_deadline else "CANCELLED"


class StopCondition:
    """When a running generation must stop: its RPC ended, or its deadline passed.

    Called by the worker before every decode step (`cancelled=` of the engine)."""

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline  # time.monotonic(); None: only the RPC's end stops it
        self.rpc_ended = threading.Event()

    @classmethod
    def for_call(cls, context: grpc.aio.ServicerContext, with_deadline: bool = True) \
            -> StopCondition:
        """Stops when the call ends (and, `with_deadline`, when its deadline passes)."""
        stop = cls(call_deadline(context) if with_deadline else None)
        context.add_done_callback(lambda _: stop.end())
        return stop

    def __call__(self) -> bool:
        return self.rpc_ended.is_set() or (
            self.deadline is not None and time.monotonic() >= self.deadline)

    def end(self) -> None:
        """The handler is done with the request: any worker still on it stops."""
        self.rpc_ended.set()

    def ended_status(self) -> str:
        return ended_status(self.deadline)

    def cancelled_status(self, event: GenerationEvent) -> str:
        """For the event that finished a generation as "cancelled": CANCELLED when the RPC
        is already over (nobody to tell); else only the deadline stopped it, and the
        request ends with DEADLINE_EXCEEDED instead of an answer that looks complete."""
        if self.rpc_ended.is_set():
            return "CANCELLED"
        raise DeadlineExceeded(f"deadline exceeded after {event.stats.completion_tokens} tokens")


@dataclass(frozen=True)
class _Failed:
    """An exception raised on the worker thread, carried to the handler to re-raise."""

    error: BaseException


class Generation:
    """One request's generation, run on a worker thread of its model.

    `events()` takes a slot of the model first (QueueFull when its queue is full),
    then yields the engine's events as the worker produces them. Whoever stops
    listening must make `should_stop()` true: the worker then ends within one decode
    step, frees the slot, and `worker` resolves to the final event it made.
    """

    def __init__(self, entry: ModelEntry, prompt: Prompt, params: SamplingParams,
                 should_stop: StopCondition, energy: EnergyAccounting | None = None,
                 request_id: str = ""):
        self.entry = entry
        self.prompt = prompt
        self.params = params
        self.should_stop = should_stop
        self.worker: asyncio.Future[GenerationEvent | None] | None = None
        self.energy = energy
        self.request_id = request_id
        self.span: Span | None = None  # the energy window, opened once the request has a slot

    async def events(self) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationEvent | _Failed] = asyncio.Queue()
        put = queue.put_nowait
        generator = self.entry.text_generator()

        def work() -> GenerationEvent | None:
            try:
                for event in generator.generate(self.prompt, self.params,
                                                cancelled=self.should_stop):
                    loop.call_soon_threadsafe(put, event)
                    if event.finish_reason is not None:
                        return event
            except Exception as e:  # carried to the handler, which maps it to a status
                loop.call_soon_threadsafe(put, _Failed(e))
            return None

        admission = self.entry.admission
        await admission.acquire()
        if self.energy is not None:  # energy counts from here: running, not queued
            self.span = self.energy.begin(self.request_id)
        try:
            self.worker = loop.run_in_executor(self.entry.executor, work)
        except BaseException:
            admission.release()
            raise
        self.worker.add_done_callback(lambda _: admission.release())
        while True:
            item = await queue.get()
            if isinstance(item, _Failed):
                raise item.error
            yield item
            if item.finish_reason is not None:
                return
