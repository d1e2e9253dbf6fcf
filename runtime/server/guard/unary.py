"""One place that runs a unary RPC handler, logs it, and turns failures into statuses."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from runtime.server.guard.errors import abort_recorded
from runtime.server.guard.request_log import RequestRecord, log_request

Response = TypeVar("Response")


async def logged_unary(
    context: grpc.aio.ServicerContext,
    method: str,
    model: str,
    run: Callable[[], Awaitable[Response]],
) -> Response:
    """Await `run()`; any failure aborts the RPC with its mapped status. One log line."""
    record = RequestRecord.begin(method, model=model, peer=context.peer())
    started = time.monotonic()
    try:
        return await run()
    except Exception as e:
        await abort_recorded(context, e, record)
    finally:
        record.latency_s = time.monotonic() - started
        log_request(record)
