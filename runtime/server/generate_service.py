"""The EdgeRuntime servicer: thin async handlers over the registry and the engine.

How a Generate stream flows:
1. The request is checked (model, prompt, sampling) before it takes a queue place.
2. It waits for one of the model's slots (admission: a full queue is refused at once).
3. The engine's generator runs on one of the model's worker threads; each event is
   handed to the event loop with `call_soon_threadsafe` into an asyncio.Queue, and
   the handler yields it to the client as soon as it arrives: the first token is on
   the wire while the rest are still being computed.
4. The slot is freed when the worker finishes, not when the last message is sent, so
   a client that reads slowly holds buffered messages, never a slot.
5. The worker asks `should_stop()` before every decode step: the client cancelling,
   its deadline passing, or the handler ending for any reason stop it within one step.
   A deadline ends the stream with DEADLINE_EXCEEDED, never with a final message that
   would look like a complete answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from runtime.errors import InvalidRequest
from runtime.llm.engine import GenerationEvent
from runtime.llm.sampling import SamplingParams
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.proto.e2edge.v1 import runtime_pb2_grpc as pb_grpc
from runtime.server import convert, power_watch
from runtime.server.classify_service import ClassifyServicer
from runtime.server.decode_pool import ImageDecoding
from runtime.server.energy_accounting import EnergyAccounting, fill_generation_energy
from runtime.server.errors import DeadlineExceeded, Draining, abort_recorded
from runtime.server.model_registry import ModelEntry, ModelRegistry
from runtime.server.request_log import RequestRecord, log_request
from runtime.server.unary import logged_unary


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

    def __init__(self, entry: ModelEntry, prompt: str | list[int], params: SamplingParams,
                 should_stop: Callable[[], bool], energy: EnergyAccounting | None = None,
                 request_id: str = ""):
        self.entry = entry
        self.prompt = prompt
        self.params = params
        self.should_stop = should_stop
        self.worker: asyncio.Future[GenerationEvent | None] | None = None
        self.energy = energy
        self.request_id = request_id
        self.span = None  # the energy window, opened once the request has a slot

    async def events(self) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationEvent | _Failed] = asyncio.Queue()
        put = queue.put_nowait
        engine = self.entry.engine

        def work() -> GenerationEvent | None:
            try:
                for event in engine.generate(self.prompt, self.params, cancelled=self.should_stop):
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


class EdgeRuntimeServicer(ClassifyServicer, pb_grpc.EdgeRuntimeServicer):
    """Generate, the model list and power here; Classify and ClassifyStream from the mixin."""

    def __init__(self, registry: ModelRegistry, decoding: ImageDecoding,
                 energy: EnergyAccounting | None = None):
        self.registry = registry
        self.decoding = decoding  # where Classify decodes its images (the daemon closes it)
        self.energy = energy  # power source, per-request energy, metrics (None: none of them)
        self.draining = False  # set at shutdown: new requests are refused with UNAVAILABLE

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        received = time.monotonic()
        request_id = uuid.uuid4().hex[:16]  # until the client's own id is checked
        record = RequestRecord(request_id, "Generate", model=request.model, peer=context.peer())
        stop = threading.Event()
        context.add_done_callback(lambda _: stop.set())  # the RPC ended: client gone, deadline
        remaining = context.time_remaining()
        deadline = None if remaining is None else received + remaining

        def should_stop() -> bool:
            return stop.is_set() or (deadline is not None and time.monotonic() >= deadline)

        generation = None
        try:
            if request.request_id:
                request_id = convert.request_id_from_proto(request.request_id)
                record.request_id = request_id
            if self.draining:
                raise Draining("the daemon is shutting down; retry on another instance")
            entry = self.registry.ready(convert.model_name_from_proto(request.model))
            if entry.manifest.get("kind") != "llm":
                raise InvalidRequest("model", f"{entry.name!r} is a vision model; use Classify")
            prompt = convert.prompt_from_proto(request)
            params = convert.sampling_from_proto(request.sampling)
            generation = Generation(entry, prompt, params, should_stop, self.energy, request_id)
            async for event in generation.events():
                if event.stats is not None:
                    _record_stats(record, event, received)
                if event.finish_reason == "cancelled":
                    if stop.is_set():  # the RPC is already over: nobody to tell
                        record.status = "CANCELLED"
                        return
                    # Only the deadline stops a generation whose client still listens:
                    # end with its status, not with a stream that looks complete.
                    raise DeadlineExceeded(
                        f"deadline exceeded after {event.stats.completion_tokens} tokens"
                    )
                response = convert.event_to_proto(event, request_id, received)
                if event.stats is not None and generation.span is not None:
                    fill_generation_energy(response.stats, self.energy.end(generation.span))
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            # The RPC ended under us: the client cancelled or its deadline passed.
            past_deadline = deadline is not None and time.monotonic() >= deadline
            record.status = "DEADLINE_EXCEEDED" if past_deadline else "CANCELLED"
            raise
        except Exception as e:
            await abort_recorded(context, e, record)
        finally:
            stop.set()
            record.latency_s = time.monotonic() - received
            worker = generation.worker if generation is not None else None
            if worker is None or worker.done():
                self._generation_done(record, generation, worker, received)
            else:  # log once the worker has stopped, with the tokens it really made
                worker.add_done_callback(
                    lambda w: self._generation_done(record, generation, w, received))

    def _generation_done(self, record: RequestRecord, generation: Generation | None,
                         worker: asyncio.Future | None, received: float) -> None:
        """Log the request, close its energy window if still open, count it in the metrics."""
        _log_generation(record, worker, received)
        if self.energy is not None:
            span = generation.span if generation is not None else None
            self.energy.observe("generate", record.model, record.status, record.latency_s,
                                tokens=record.completion_tokens,
                                energy=self.energy.end_if_open(span))

    async def WatchPower(
        self, request: pb.WatchPowerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PowerSample]:
        if self.energy is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no power monitor")
        async for sample in power_watch.watch_power(self.energy, request, context):
            yield sample

    @property
    def power_source(self) -> str:
        return self.energy.source_name if self.energy is not None else ""

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        record = RequestRecord(uuid.uuid4().hex[:16], "ListModels", peer=context.peer())
        started = time.monotonic()
        response = pb.ListModelsResponse(
            models=[convert.model_info(e, self.power_source) for e in self.registry])
        record.latency_s = time.monotonic() - started
        log_request(record)
        return response

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        async def info() -> pb.ModelInfo:
            return convert.model_info(self.registry.get(request.name), self.power_source)

        return await logged_unary(context, "GetModel", request.name, info)


def _log_generation(record: RequestRecord, worker: asyncio.Future | None,
                    received: float) -> None:
    """Log a Generate request; a stream that ended early takes its stats from the worker."""
    if (not record.finish_reason and worker is not None and not worker.cancelled()
            and worker.exception() is None and worker.result() is not None):
        _record_stats(record, worker.result(), received)
    log_request(record)


def _record_stats(record: RequestRecord, event: GenerationEvent, received: float) -> None:
    stats = event.stats
    record.finish_reason = event.finish_reason or ""
    record.prompt_tokens = stats.prompt_tokens
    record.completion_tokens = stats.completion_tokens
    record.time_to_first_token_s = stats.time_to_first_token_s
    record.decode_tokens_per_s = stats.decode_tokens_per_s
    record.queue_s = stats.started_at - received
