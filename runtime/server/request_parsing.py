"""Malformed request bytes -> INVALID_ARGUMENT, for every RPC of the daemon.

grpcio parses a request before the servicer runs; bytes that are not a valid message
(corrupt wire format, a string field with bad UTF-8) then end the call with UNKNOWN
"Unexpected DecodeError", which tells a client nothing it can act on. This
interceptor hands each handler the raw bytes instead and parses them itself, so such
a call ends with INVALID_ARGUMENT naming the message type. A bad message inside a
client stream ends that stream the same way.

Also, a method a library servicer leaves unimplemented (grpc_health's aio servicer
has no `List`) raises NotImplementedError, which grpcio reports as UNKNOWN; here it
answers UNIMPLEMENTED, as for a method that does not exist.
"""

from __future__ import annotations

import inspect

import grpc
from google.protobuf.message import DecodeError


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


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    serializer = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        behavior = handler.stream_stream

        async def stream_stream(request_iterator, context):
            requests = _parsed_stream(deserialize, request_iterator, context)
            async for response in _stream_out(lambda: behavior(requests, context), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(stream_stream,
                                                     response_serializer=serializer)
    if handler.request_streaming:
        behavior = handler.stream_unary

        async def stream_unary(request_iterator, context):
            try:
                return await behavior(_parsed_stream(deserialize, request_iterator, context),
                                      context)
            except NotImplementedError:
                await _unimplemented(context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serializer)
    if handler.response_streaming:
        behavior = handler.unary_stream

        async def unary_stream(raw, context):
            request = await _parse(deserialize, raw, context)
            async for response in _stream_out(lambda: behavior(request, context), context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serializer)
    behavior = handler.unary_unary

    async def unary_unary(raw, context):
        request = await _parse(deserialize, raw, context)
        try:
            result = behavior(request, context)
            return await result if inspect.isawaitable(result) else result
        except NotImplementedError:
            await _unimplemented(context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serializer)


class ParseRequests(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # unknown method (UNIMPLEMENTED), or raw bytes already
        return _wrap(handler)
