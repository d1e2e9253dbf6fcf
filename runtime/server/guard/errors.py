"""Request errors -> gRPC status codes, in one table.

A request that fails gets a status code a client can branch on and a message a user
can act on; an InvalidRequest also names its field in the `e2edge-field` trailing
metadata. Anything unexpected becomes INTERNAL with the traceback in the daemon's
log: a request never takes the daemon down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from runtime.errors import (
    BackendUnavailable,
    ConfigError,
    E2edgeError,
    InvalidRequest,
    ModelNotFound,
    PackageError,
)

if TYPE_CHECKING:
    from runtime.server.guard.request_log import RequestRecord

log = logging.getLogger("e2edge.server")

FIELD_METADATA_KEY = "e2edge-field"
PUSHBACK_METADATA_KEY = "grpc-retry-pushback-ms"  # gRFC A6: retry a refusal after this


class QueueFull(E2edgeError):
    """The model's slots are busy and its queue is full; `retry_after_s`: when a place is
    likely to free (sent as gRPC retry pushback), None when not known yet."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(E2edgeError):
    """The daemon is shutting down and takes no new requests."""

    def __init__(self, message: str = "the daemon is shutting down; retry on another instance"):
        super().__init__(message)


class ModelUnavailable(E2edgeError):
    """The model is in the config but is still loading or failed to load."""


class DeadlineExceeded(E2edgeError):
    """The client's deadline passed while its request was running."""


# First match wins, so subclasses come before their bases.
STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Draining, grpc.StatusCode.UNAVAILABLE),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (PackageError, grpc.StatusCode.FAILED_PRECONDITION),
    (BackendUnavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (E2edgeError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(
    error: BaseException, request_id: str = ""
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(code, details, trailing metadata) for an error raised while serving a request."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            metadata: tuple[tuple[str, str], ...] = ()
            if isinstance(error, InvalidRequest):
                metadata = ((FIELD_METADATA_KEY, error.field),)
            elif isinstance(error, QueueFull) and error.retry_after_s is not None:
                metadata = ((PUSHBACK_METADATA_KEY, str(round(error.retry_after_s * 1e3))),)
            return code, " ".join(str(error).split()), metadata
    where = f" (request {request_id})" if request_id else ""
    return (
        grpc.StatusCode.INTERNAL,
        f"internal error{where}: {type(error).__name__}; the daemon log has the traceback",
        (),
    )


async def abort_recorded(context: grpc.aio.ServicerContext, error: BaseException,
                         record: RequestRecord) -> None:
    """Note the error's status on the request's log record, then abort the RPC with it."""
    code, details, _ = status_for(error, record.request_id)
    record.status, record.error = code.name, details
    await abort(context, error, record.request_id)


async def abort(context: grpc.aio.ServicerContext, error: BaseException, request_id: str = ""):
    """End the RPC with the error's status (raises grpc.aio.AbortError, never returns)."""
    code, details, metadata = status_for(error, request_id)
    if code == grpc.StatusCode.INTERNAL:
        log.error("request %s failed", request_id or "?", exc_info=error)
    await context.abort(code, details, metadata)
