"""The EdgeRuntime servicer: thin async handlers over the registry and the models.

Generate streams one request's tokens as the model's worker makes them
(core/generation.py has how, and when a generation stops). A prompt given as chat
messages is rendered by the package's chat template (runtime/llm/chat_template.py);
a package without one refuses them (FAILED_PRECONDITION) before they wait for a slot.

Classify, one request:
1. Checked before it costs anything: model (READY, vision), top_k, the image count
   and each image's byte size against the model's limits.
2. Its images are decoded and preprocessed (decode_s): on the event loop when they
   are small, else on one of the daemon's decoding threads, so decoding overlaps the
   model running other batches (core/decode_pool.py).
3. Its (n, C, S, S) pixels join the model's Batcher (core/batcher.py), which runs
   them with other requests' on one of the model's worker threads (queue_s: waiting
   for the batch to start; inference_s: the batch's run).
4. Its rows come back as the top-k labels per image, with the latency split and the
   energy: one window per request over its batch's run, shared by the power monitor
   among everything running then (runtime/server/energy.py).

ClassifyStream runs up to STREAM_WINDOW of a stream's requests at once (a camera's
next frame decodes while the last one is in the model, and frames can share a
batch) and answers in request order. A failing request gets an answer with `error`
set; the stream goes on. When the daemon drains, the stream stops reading, answers
what it has, and ends with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import grpc

from runtime.llm.chat_template import Conversation, require_template
from runtime.llm.engine import GenerationEvent
from runtime.power.energy import EnergyReport
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.proto.e2edge.v1 import runtime_pb2_grpc as pb_grpc
from runtime.server.core.decode_pool import ImageDecoding
from runtime.server.core.generation import Generation, StopCondition, call_deadline, ended_status
from runtime.server.core.registry import ModelRegistry
from runtime.server.core.serving_state import ServingState
from runtime.server.edge import convert
from runtime.server.edge.power_watch import PowerWatchers
from runtime.server.energy import EnergyAccounting, energy_to_proto, fill_generation_energy
from runtime.server.guard.errors import FIELD_METADATA_KEY, Draining, abort_recorded, status_for
from runtime.server.guard.request_log import RequestRecord, log_request
from runtime.server.guard.unary import logged_unary
from runtime.server.metrics import MetricsEndpoint

log = logging.getLogger("e2edge.server")

STREAM_WINDOW = 16  # requests of one ClassifyStream in flight at once


@dataclass
class _Call:
    """One Classify request on its way through; the batcher's tag for it."""

    request: pb.ClassifyRequest
    record: RequestRecord
    received: float
    images: int = 0
    energy: EnergyReport | None = None  # set on the worker thread when its batch ends


def _new_call(request: pb.ClassifyRequest, peer: str, method: str) -> _Call:
    return _Call(request, RequestRecord.begin(method, model=request.model, peer=peer),
                 time.monotonic())


class EdgeRuntimeServicer(pb_grpc.EdgeRuntimeServicer):
    """Generate, Classify and ClassifyStream, the model list, and WatchPower."""

    def __init__(self, registry: ModelRegistry, decoding: ImageDecoding, state: ServingState,
                 energy: EnergyAccounting | None = None, metrics: MetricsEndpoint | None = None):
        self.registry = registry
        self.decoding = decoding  # where Classify decodes its images (the daemon closes it)
        self.state = state  # the drain, shared with every service
        self.energy = energy  # power source and per-request energy (None: no monitor)
        self.metrics = metrics  # request counters (None: no metrics endpoint)
        self.power_watchers = PowerWatchers(energy) if energy is not None else None

    # ---- Generate ------------------------------------------------------------------
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        received = time.monotonic()
        record = RequestRecord.begin("Generate", model=request.model, peer=context.peer())
        stop = StopCondition.for_call(context)
        generation = None
        try:
            if request.request_id:
                record.request_id = convert.request_id_from_proto(request.request_id)
            self.state.admit()
            entry = self.registry.ready(convert.model_name_from_proto(request.model))
            generator = entry.text_generator(f"{entry.name!r} is a vision model; use Classify")
            prompt = convert.prompt_from_proto(request)
            if isinstance(prompt, Conversation):  # refused before it waits for a slot
                require_template(generator.chat_template, generator.package.name)
            params = convert.sampling_from_proto(request.sampling)
            generation = Generation(entry, prompt, params, stop, self.energy, record.request_id)
            async for event in generation.events():
                if event.stats is not None:
                    _record_stats(record, event, received)
                if event.finish_reason == "cancelled":
                    record.status = stop.cancelled_status(event)
                    return
                response = convert.event_to_proto(event, record.request_id, received)
                if event.stats is not None and generation.span is not None:
                    fill_generation_energy(response.stats, self.energy.end(generation.span))
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            record.status = stop.ended_status()  # the RPC ended under us
            raise
        except Exception as e:
            await abort_recorded(context, e, record)
        finally:
            stop.end()
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
        span = generation.span if generation is not None else None
        energy = self.energy.end_if_open(span) if self.energy is not None else None
        if self.metrics is not None:
            self.metrics.observe("generate", record.model, record.status, record.latency_s,
                                 tokens=record.completion_tokens, energy=energy)

    # ---- Classify ------------------------------------------------------------------
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        call = _new_call(request, context.peer(), "Classify")
        try:
            return await self._classify(call)
        except asyncio.CancelledError:  # the client left or its deadline passed
            call.record.status = ended_status(call_deadline(context))
            raise
        except Exception as e:
            await abort_recorded(context, e, call.record)
        finally:
            self._classified(call)

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ClassifyResponse]:
        peer = context.peer()
        # In request order: each request's task and the model it names.
        answers: asyncio.Queue[tuple[asyncio.Task, str] | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        drained = False

        async def read() -> None:
            nonlocal drained
            try:
                async for request in request_iterator:
                    self.registry.bill(request.model)  # reading the stream: its requests' models
                    if self.state.draining:
                        drained = True
                        return
                    await window.acquire()
                    answers.put_nowait((asyncio.ensure_future(self._stream_item(request, peer)),
                                        request.model))
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await answers.get()) is not None:
                task, model = answer
                response = await task
                window.release()
                self.registry.bill(model)  # writing the answers: their requests' models
                yield response
            await reader  # a failed read ends the stream with its error
            if drained:
                code, details, _ = status_for(Draining())
                await context.abort(code, details)
        finally:
            reader.cancel()
            while not answers.empty():
                answer = answers.get_nowait()
                if answer is not None:
                    answer[0].cancel()

    async def _stream_item(self, request: pb.ClassifyRequest, peer: str) -> pb.ClassifyResponse:
        """One request of a stream: its answer, or its error as an answer."""
        call = _new_call(request, peer, "ClassifyStream")
        try:
            return await self._classify(call)
        except asyncio.CancelledError:
            call.record.status = "CANCELLED"
            raise
        except Exception as e:  # this request fails; the stream goes on
            code, details, metadata = status_for(e, call.record.request_id)
            call.record.status, call.record.error = code.name, details
            if code == grpc.StatusCode.INTERNAL:
                log.error("request %s failed", call.record.request_id, exc_info=e)
            return pb.ClassifyResponse(
                request_id=call.record.request_id,
                error=pb.RequestError(code=code.name, message=details,
                                      field=dict(metadata).get(FIELD_METADATA_KEY, "")),
            )
        finally:
            self._classified(call)

    async def _classify(self, call: _Call) -> pb.ClassifyResponse:
        request, record = call.request, call.record
        if request.request_id:
            record.request_id = convert.request_id_from_proto(request.request_id)
        self.state.admit()
        entry = self.registry.ready(convert.model_name_from_proto(request.model))
        model = entry.image_classifier(f"{entry.name!r} is not a vision model; Classify "
                                       "serves vision packages (LLMs: Generate)")
        top_k = model.check_top_k(request.top_k)
        convert.check_images(request.images, model.limits)
        call.images = len(request.images)

        decode_started = time.monotonic()
        pixels = await self.decoding.run(  # (n, C, S, S) float32
            convert.request_pixels(request.images), convert.prepare_images, request.images,
            model.limits, model.preprocess)
        decode_s = time.monotonic() - decode_started

        window = self._energy_window if self.energy is not None else None
        result = await model.batcher_on(entry.executor, window).submit(pixels, tag=call)
        record.queue_s = result.queue_s
        stats = pb.ClassifyStats(
            images=call.images, batch_size=result.batch_size, decode_s=decode_s,
            queue_s=result.queue_s, inference_s=result.run_s,
            total_s=time.monotonic() - call.received,
        )
        if call.energy is not None:
            stats.energy.CopyFrom(energy_to_proto(call.energy))
            joules_per_image = call.energy.per_item(call.images)
            if joules_per_image is not None:
                stats.joules_per_image = joules_per_image
        return pb.ClassifyResponse(
            request_id=record.request_id,
            results=convert.classifications(model.top(result.outputs, top_k)),
            stats=stats,
        )

    @contextlib.contextmanager
    def _energy_window(self, tags: Sequence[object]) -> Iterator[None]:
        """On the worker thread, around a batch's run: one energy window per request.

        The tags of other services' requests in the batch (KServe's) are not _Calls:
        they run in the window unmeasured.
        """
        calls = [tag for tag in tags if isinstance(tag, _Call)]
        spans = [self.energy.begin(call.record.request_id) for call in calls]
        try:
            yield
        finally:
            for call, span in zip(calls, spans):
                call.energy = self.energy.end(span)

    def _classified(self, call: _Call) -> None:
        """Log the request and count it in the metrics."""
        call.record.latency_s = time.monotonic() - call.received
        log_request(call.record)
        if self.metrics is not None:
            self.metrics.observe("classify", call.record.model, call.record.status,
                                 call.record.latency_s, images=call.images, energy=call.energy)

    # ---- power and the model list --------------------------------------------------
    async def WatchPower(
        self, request: pb.WatchPowerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PowerSample]:
        if self.power_watchers is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no power monitor")
        async for sample in self.power_watchers.watch(request, context, self.state):
            yield sample

    @property
    def power_source(self) -> str:
        return self.energy.source_name if self.energy is not None else ""

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        record = RequestRecord.begin("ListModels", peer=context.peer())
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
