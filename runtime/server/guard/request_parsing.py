"""The guards every call of the daemon passes: the token check, then parsing.

    guarded = GuardedServer(server, auth)
    pb_grpc.add_EdgeRuntimeServicer_to_server(servicer, guarded)   # any service

Each method's handler is wrapped once, when its service is added (or, for a
library's generic handler, the first time the method is called), instead of by
grpc.aio interceptors, which run as two more coroutines on every call and rebuild
the wrapped handler each time.

- Auth first: a call without a valid bearer token ends with UNAUTHENTICATED before
  its request is parsed (runtime/server/guard/security.py).
- grpcio parses a request before the servicer runs; bytes that are not a valid
  message (corrupt wire format, a string field with bad UTF-8) then end the call with
  UNKNOWN "Unexpected DecodeError", which tells a client nothing it can act on. Here
  each handler gets the raw bytes instead and parses them itself, so such a call
  ends with INVALID_ARGUMENT naming the message type. A bad message inside a client
  stream ends that stream the same way.
- A method a library servicer leaves unimplemented (grpc_health's aio servicer has
  no `List`) raises NotImplementedError, which grpcio reports as UNKNOWN; here it
  answers UNIMPLEMENTED, as for a method that does not exist.
"""

from __future__ import annotations

import inspect

import grpc
from google.protobuf.message import DecodeError

from runtime.server.guard.security import TokenAuth


async def _parse(deserialize, raw: bytes, context: grpc.aio.ServicerContext):
    try:
        return deserialize(raw)
    except DecodeError as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {e}")


async def _parsed_stream(deserialize, request_iterator, context):
    async for raw in request_iterator:
        yield await _parse(deserialize, raw, context)


async def _unimplemented(context: grpc.aio.ServicerContext):
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")


async def _stream_out(start, context):
    """A response-streaming behavior's output: an async generator, or a coroutine that
    writes with context.write() (grpc_health's Watch)."""
    try:
        result = start()
        if inspect.isasyncgen(result):
            async for response in result:
                yield response
        else:
            await result
    except NotImplementedError:
        await _unimplemented(context)


def _wrap(handler: grpc.RpcMethodHandler, method: str, auth: TokenAuth) -> grpc.RpcMethodHandler:
    """`handler` behind the token check, taking raw bytes and parsing them itself."""
    deserialize = handler.request_deserializer
    serializer = handler.response_serializer
    if deserialize is None:  # takes raw bytes already: only the token check
        deserialize = _identity
    if handler.request_streaming and handler.response_streaming:
        behavior = handler.stream_stream

        async def stream_stream(request_iterator, context):
            await auth.check(method, context)
            requests = _parsed_stream(deserialize, request_iterator, context)
            async for response in _stream_out(lambda: behavior(requests, context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream,
                                                     response_serializer=serializer)
    if handler.request_streaming:
        behavior = handler.stream_unary

        async def stream_unary(request_iterator, context):
            await auth.check(method, context)
            try:
                return await behavior(_parsed_stream(deserialize, request_iterator, context),
                                      context)
            except NotImplementedError:
                await _unimplemented(context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serializer)
    if handler.response_streaming:
        behavior = handler.unary_stream

        async def unary_stream(raw, context):
            await auth.check(method, context)
            request = await _parse(deserialize, raw, context)
            async for response in _stream_out(lambda: behavior(request, context), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serializer)
    behavior = handler.unary_unary

    async def unary_unary(raw, context):
        await auth.check(method, context)
        request = await _parse(deserialize, raw, context)
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except NotImplementedError:
            await _unimplemented(context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serializer)


def _identity(raw: bytes) -> bytes:
    return raw


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A library's generic handler (reflection, health) with each method wrapped once."""

    def __init__(self, inner: grpc.GenericRpcHandler, auth: TokenAuth):
        self.inner = inner
        self.auth = auth
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details):
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = self.inner.service(handler_call_details)
            if handler is None:  # not this service's (not cached: names come from clients)
                return None
            wrapped = self._wrapped[method] = _wrap(handler, method, self.auth)
        return wrapped


class GuardedServer:
    """What `add_*_to_server` registers services on: the real server, guarded."""

    def __init__(self, server: grpc.aio.Server, auth: TokenAuth):
        self.server = server
        self.auth = auth

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_GuardedGeneric(handler, self.auth) for handler in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.server.add_registered_method_handlers(service, {
            name: _wrap(handler, f"/{service}/{name}", self.auth)
            for name, handler in handlers.items()
        })
