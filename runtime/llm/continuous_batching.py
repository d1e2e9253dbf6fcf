"""Continuous batching: the model's concurrent streams share one decode step.

Decoding is memory-bound: a step for one sequence reads every weight once, and a step
for eight sequences reads them once too. So one scheduler thread per model owns a
shared KV buffer with a slot per sequence and loops:

1. admit one waiting request into a free slot: prefill its prompt there (batch 1) and
   sample its first token;
2. run one decode step over all active slots at once (each row at its own length);
3. hand every row's event to its client's queue; a finished or cancelled sequence
   leaves, and the last slot's cache moves into the hole so active slots stay 0..B-1.

A request joins at the next step and a finished one leaves at once, so throughput
grows with clients while each stream sees the same tokens as it would alone. In the
daemon each prefill and each decode step waits for its turn on the box first (`gate`,
runtime/server/core/scheduler.py). A request cancelled (deadline passed, client left)
before its prefill ran is counted as shed, and so are the streams of a step that gives
its turn up because every one of them was cancelled while it waited. A stream
cancelled while others still want the step rides along once and leaves before the
next, as a cancelled stream always did.
`generate()` has the engine's signature, so the daemon uses either the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.llm.engine import GenerationEvent, LLMEngine, Prompt
from runtime.llm.kv_buffer import SharedKVBuffer
from runtime.llm.sampling import SamplingParams
from runtime.llm.sequence import SequenceState
from runtime.step_gate import UNGATED, StepGate

log = logging.getLogger(__name__)


@dataclass
class _Request:
    ids: list[int]
    params: SamplingParams
    cancelled: Callable[[], bool]
    submitted: float
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    state: SequenceState | None = None


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def _decoding_follows() -> bool:
    """As a prefill ends: its stream's first decode step is ready."""
    return True


class ContinuousBatcher:
    """Serves generate() calls from many threads as one batched decode loop."""

    kind = "llm"

    def __init__(self, engine: LLMEngine, slots: int, capacity: int):
        if not engine.shared_cache:
            raise ValueError("continuous batching needs a package exported with "
                             "--attention gqa (a shared KV buffer)")
        self.engine = engine
        self.slots = slots
        self.capacity = min(capacity, engine.context_length)
        self.buffer = SharedKVBuffer(engine.layout, engine.backend, slots, self.capacity)
        # what the daemon reads from an engine
        self.package = engine.package
        self.tokenizer = engine.tokenizer
        self.chat_template = engine.chat_template
        self.backend_name = engine.backend_name
        self.providers = engine.providers
        self.backend_reason = engine.backend_reason
        self.execution = f"{engine.execution}, {slots} slots batched per decode step"
        self.context_length = self.capacity
        self.layout = engine.layout
        self.gate: StepGate = UNGATED  # the daemon's scheduler: each step waits its turn
        self.steps = 0  # decode steps run (for tests and metrics)
        self.max_batch_seen = 0
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []  # index = slot
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="e2edge-batcher", daemon=True)
        self._thread.start()

    def encode(self, text: str) -> list[int]:
        return self.engine.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.engine.decode(ids)

    # ---- the client side ------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[GenerationEvent]:
        """Validate now (raising InvalidRequest), then return the event stream."""
        ids = self.engine.request_ids(
            prompt, params, self.capacity,
            f"the {self.capacity} tokens a sequence may hold here "
            "(the model's max_sequence_length)")
        request = _Request(ids, params, cancelled or (lambda: False), time.monotonic())
        with self._wake:
            if self._closed:
                raise RuntimeError("the model is shutting down")
            self._waiting.append(request)
            self._wake.notify()
        return self._events(request)

    @staticmethod
    def _events(request: _Request) -> Iterator[GenerationEvent]:
        while True:
            item = request.events.get()
            if isinstance(item, _Failed):
                raise item.error
            yield item
            if item.finish_reason is not None:
                return

    def close(self) -> None:
        """Stop the loop; requests still waiting or running get an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(30)

    # ---- the scheduler thread -------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._waiting and not self._active:
                    self._wake.wait()
                if self._closed:
                    break
                joining = (self._waiting.popleft()
                           if self._waiting and len(self._active) < self.slots else None)
            if joining is not None:
                try:
                    self._prefill(joining)
                except Exception as e:  # only this request fails; the loop goes on
                    log.exception("prefill failed")
                    joining.events.put(_Failed(e))
            if self._active:
                try:
                    self._decode_step()
                except Exception as e:  # the sequences in the step fail; the loop goes on
                    log.exception("batched decode step failed")
                    for request in self._active:
                        request.events.put(_Failed(e))
                    self._active.clear()
        failure = _Failed(RuntimeError("the model was unloaded"))
        for request in [*self._active, *self._waiting]:
            request.events.put(failure)

    def _prefill(self, request: _Request) -> None:
        state = SequenceState(self.tokenizer, self.engine.stop_token_ids, request.ids,
                              request.params, request.submitted)
        request.state = state
        if request.cancelled():  # while it waited to join: it never ran
            self.gate.shed(1)
            request.events.put(state.cancel())
            return
        slot = len(self._active)
        ids = np.asarray([request.ids], dtype=np.int64)
        with self.gate.turn(lambda: self._closed or request.cancelled(), _decoding_follows) as run:
            if run:
                began = time.monotonic()
                logits = self.engine.step(ids, [len(request.ids)], self.buffer, first_slot=slot)
                state.prefilled(time.monotonic() - began)
        if not run:
            self.gate.shed(1)
            request.events.put(state.cancel())
            return
        event = state.advance(logits[0, -1])
        request.events.put(event)
        if event.finish_reason is None:
            self._active.append(request)

    def _decode_step(self) -> None:
        self._drop_cancelled()  # cancelled before the step: they leave now
        if not self._active:
            return
        with self.gate.turn(self._nothing_to_decode, self._more_to_do) as run:
            if run:
                states = [r.state for r in self._active]
                ids = np.asarray([[s.last_token] for s in states], dtype=np.int64)
                logits = self.engine.step(ids, [len(s.history) for s in states], self.buffer)
        if not run:  # every stream in it expired while the step waited for its turn
            self.gate.shed(self._drop_cancelled())
            return
        self.steps += 1
        self.max_batch_seen = max(self.max_batch_seen, len(states))
        done = []
        for row, request in enumerate(self._active):
            event = request.state.advance(logits[row, -1])
            request.events.put(event)
            if event.finish_reason is not None:
                done.append(request)
        for request in done:
            self._leave(request)

    def _more_to_do(self) -> bool:
        """As a step ends: streams go on, or wait to join."""
        return bool(self._active or self._waiting)

    def _nothing_to_decode(self) -> bool:
        """A decode step waiting for its turn may give it up: every stream in it is over."""
        return self._closed or all(request.cancelled() for request in self._active)

    def _drop_cancelled(self) -> int:
        """Streams cancelled (deadline, client gone) leave; how many did."""
        dropped = [request for request in self._active if request.cancelled()]
        for request in dropped:
            request.events.put(request.state.cancel())
            self._leave(request)
        return len(dropped)

    def _leave(self, request: _Request) -> None:
        """Free the request's slot; the last active slot moves into it."""
        slot = self._active.index(request)
        last = len(self._active) - 1
        if slot != last:
            moved = self._active[last]
            self.buffer.move(last, slot, len(moved.state.history) - 1)  # cached positions
            self._active[slot] = moved
        self._active.pop()
