"""Classify and ClassifyStream: thin async handlers over decoding, the batcher and the model.

How one request flows:
1. Checked before it costs anything: model (READY, vision), top_k, the image count
   and each image's byte size against the model's limits.
2. Its images are decoded and preprocessed (decode_s): on the event loop when they
   are small, else on one of the daemon's decoding threads, so decoding overlaps the
   model running other batches (runtime/server/decode_pool.py).
3. Its (n, C, S, S) pixels join the model's Batcher (runtime/server/batcher.py),
   which runs them with other requests' on one of the model's worker threads
   (queue_s: waiting for the batch to start; inference_s: the batch's run).
4. Its rows come back as the top-k labels per image, with the latency split and the
   energy: one window per request over its batch's run, shared by the power monitor
   among everything running then (runtime/server/energy_accounting.py).

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
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import grpc

from runtime.errors import InvalidRequest
from runtime.power.energy import EnergyReport
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server import convert
from runtime.server.classify_convert import (
    check_images,
    classifications,
    prepare_images,
    request_pixels,
)
from runtime.server.decode_pool import ImageDecoding
from runtime.server.energy_accounting import EnergyAccounting, energy_to_proto
from runtime.server.errors import FIELD_METADATA_KEY, Draining, abort_recorded, status_for
from runtime.server.model_registry import ModelRegistry
from runtime.server.request_log import RequestRecord, log_request
from runtime.server.vision_model import VisionModel

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
    record = RequestRecord(uuid.uuid4().hex[:16], method, model=request.model, peer=peer)
    return _Call(request, record, time.monotonic())


def _ended_status(context: grpc.aio.ServicerContext) -> str:
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


class ClassifyServicer:
    """Mixed into EdgeRuntimeServicer, which provides these four attributes."""

    registry: ModelRegistry
    draining: bool
    energy: EnergyAccounting | None
    decoding: ImageDecoding

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        call = _new_call(request, context.peer(), "Classify")
        try:
            return await self._classify(call)
        except asyncio.CancelledError:  # the client left or its deadline passed
            call.record.status = _ended_status(context)
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
        answers: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()  # in request order
        window = asyncio.Semaphore(STREAM_WINDOW)
        drained = False

        async def read() -> None:
            nonlocal drained
            try:
                async for request in request_iterator:
                    if self.draining:
                        drained = True
                        return
                    await window.acquire()
                    answers.put_nowait(asyncio.ensure_future(self._stream_item(request, peer)))
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await answers.get()) is not None:
                response = await task
                window.release()
                yield response
            await reader  # a failed read ends the stream with its error
            if drained:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "the daemon is shutting down; retry on another instance")
        finally:
            reader.cancel()
            while not answers.empty():
                task = answers.get_nowait()
                if task is not None:
                    task.cancel()

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
        if self.draining:
            raise Draining("the daemon is shutting down; retry on another instance")
        entry = self.registry.ready(convert.model_name_from_proto(request.model))
        model = entry.engine
        if not isinstance(model, VisionModel):
            raise InvalidRequest("model", f"{entry.name!r} is not a vision model; Classify "
                                          "serves vision packages (LLMs: Generate)")
        top_k = model.check_top_k(request.top_k)
        check_images(request.images, model.limits)
        call.images = len(request.images)

        decode_started = time.monotonic()
        pixels = await self.decoding.run(  # (n, C, S, S) float32
            request_pixels(request.images), prepare_images, request.images, model.limits,
            model.preprocess)
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
            results=classifications(model.top(result.outputs, top_k)),
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
        if self.energy is not None:
            self.energy.observe("classify", call.record.model, call.record.status,
                                call.record.latency_s, images=call.images, energy=call.energy)
