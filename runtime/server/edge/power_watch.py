"""WatchPower: the daemon's power readings streamed to dashboards as they are taken.

Each stream is a listener on the power sampler. The listener runs on the sampler's
thread, keeps every n-th reading (the requested decimation), turns it into a
pb.PowerSample there, with the requests active at that instant, and hands it to the
event loop into a small bounded queue. A client that reads slower than the readings
come loses the oldest ones, never the daemon's memory; a client that cancels (or a
deadline, or the daemon's drain) removes the listener at once.

    watchers = PowerWatchers(accounting)           # one per daemon
    async for sample in watchers.watch(request, context, state): ...
    watchers.close_all()                           # at drain: every stream ends
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc

from runtime.errors import BackendUnavailable
from runtime.power.sample import PowerSample
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.core.serving_state import ServingState
from runtime.server.energy import EnergyAccounting
from runtime.server.guard.errors import abort_recorded
from runtime.server.guard.request_log import RequestRecord, log_request

QUEUE_SAMPLES = 16  # readings buffered per stream before the oldest are dropped


def every_nth(interval_ms: int, source_interval_ms: int) -> int:
    """The decimation for a requested interval: n = round(asked / source's), at least 1."""
    if interval_ms <= 0:
        return 1
    return max(1, round(interval_ms / source_interval_ms))


def sample_to_proto(
    sample: PowerSample,
    source: str,
    active_ids: list[str],
    energy_total_j: float,
    idle_mw: float | None,
) -> pb.PowerSample:
    message = pb.PowerSample(
        time_unix_s=time.time() - (time.monotonic() - sample.t),
        monotonic_s=sample.t,
        total_mw=sample.total_mw,
        rails_mw=dict(sample.rails_mw),
        power_source=source,
        active_request_ids=active_ids,
        energy_total_j=energy_total_j,
        temperatures_c=dict(sample.temperatures_c),
    )
    for name in ("cpu_load_pct", "gpu_load_pct", "ram_used_mb", "ram_total_mb"):
        value = getattr(sample, name)
        if value is not None:
            setattr(message, name, value)
    if idle_mw is not None:
        message.idle_mw = idle_mw
    return message


def put_latest(queue: asyncio.Queue, item) -> None:
    """Put without blocking; a full queue drops its oldest item (dashboards want the latest)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


class PowerWatchers:
    """The open WatchPower streams of one daemon, over its power monitor."""

    def __init__(self, accounting: EnergyAccounting):
        self.accounting = accounting
        self._queues: set[asyncio.Queue] = set()  # one per open stream

    def __len__(self) -> int:
        """WatchPower streams open right now."""
        return len(self._queues)

    def close_all(self) -> None:
        """End every WatchPower stream (at drain, so dashboards do not hold it up)."""
        for queue in list(self._queues):
            put_latest(queue, None)

    async def watch(self, request: pb.WatchPowerRequest, context: grpc.aio.ServicerContext,
                    state: ServingState) -> AsyncIterator[pb.PowerSample]:
        """The WatchPower stream; errors end it with their status (see runtime.proto)."""
        record = RequestRecord.begin("WatchPower", peer=context.peer())
        started = time.monotonic()
        try:
            state.admit()
            if not self.accounting.measures:
                raise BackendUnavailable(
                    "the daemon has no power source (power.source none, or auto found none)"
                )
            async with contextlib.aclosing(
                    _samples(self.accounting, self._queues, request, context)) as samples:
                async for message in samples:
                    yield message
        except (asyncio.CancelledError, GeneratorExit):
            record.status = "CANCELLED"  # the client left, or its deadline passed
            raise
        except Exception as e:
            await abort_recorded(context, e, record)
        finally:
            record.latency_s = time.monotonic() - started
            log_request(record)


async def _samples(
    accounting: EnergyAccounting,
    queues: set[asyncio.Queue],
    request: pb.WatchPowerRequest,
    context: grpc.aio.ServicerContext,
) -> AsyncIterator[pb.PowerSample]:
    monitor = accounting.monitor
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[pb.PowerSample | None] = asyncio.Queue(maxsize=QUEUE_SAMPLES)
    n = every_nth(request.interval_ms, monitor.source.interval_ms)
    seen = 0

    def on_sample(sample: PowerSample) -> None:  # on the sampler's thread
        nonlocal seen
        seen += 1
        if (seen - 1) % n:
            return
        message = sample_to_proto(
            sample, monitor.source_name, monitor.meter.active_ids(),
            monitor.sampler.energy_total_j, monitor.idle_mw,
        )
        loop.call_soon_threadsafe(put_latest, queue, message)

    def unsubscribe(*_) -> None:  # idempotent: from the finally, and when the RPC ends
        monitor.remove_listener(on_sample)
        queues.discard(queue)

    queues.add(queue)
    monitor.add_listener(on_sample)
    # A cancelled RPC unsubscribes at once, even before this generator is closed.
    context.add_done_callback(unsubscribe)
    try:
        sent = 0
        while True:
            message = await queue.get()
            if message is None:  # the daemon is draining
                return
            yield message
            sent += 1
            if request.max_samples and sent >= request.max_samples:
                return
    finally:
        unsubscribe()
