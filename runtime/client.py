"""A small synchronous client of the daemon, for the CLI, the benchmarks and scripts.

    with EdgeClient() as client:   # or EdgeClient("jetson.local:50051"), "unix:/path"
        for message in client.generate("demo", "Hello", max_new_tokens=32):
            print(message.text, end="", flush=True)
        final = message            # the last message carries finish_reason and stats

        # chat messages, rendered by the package's chat template on the daemon
        for message in client.chat("demo", [("system", "Be brief."), ("user", "Hi")]):
            ...

With no target the client finds the daemon as the `e2edge` commands do:
$E2EDGE_TARGET, else the systemd service's socket when it exists, else 127.0.0.1:50051
(runtime/cli/connection.local_target).

A failed call raises RemoteError: its message starts with the gRPC status code name
(`NOT_FOUND: model 'x' is not served here (models: demo)`), and `field` names the
request field an INVALID_ARGUMENT is about.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.cli.connection import local_target
from runtime.client_security import ClientSecurity
from runtime.config import DEFAULT_LISTEN, DEFAULT_MAX_MESSAGE_BYTES
from runtime.errors import E2edgeError
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.proto.e2edge.v1 import runtime_pb2_grpc as pb_grpc
from runtime.server.guard.errors import FIELD_METADATA_KEY, PUSHBACK_METADATA_KEY

DEFAULT_TARGET = DEFAULT_LISTEN  # where a daemon listens unless told otherwise
MAX_BUSY_RETRIES = 4  # gRPC caps a retry policy's attempts at 5
SAMPLING_FIELDS = (
    "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed", "ignore_eos",
)
# A chat message: (role, content), or a mapping with "role" and "content" (OpenAI style).
Message = tuple[str, str] | Mapping[str, str]


class RemoteError(E2edgeError):
    """The daemon answered with an error status (or could not be reached)."""

    def __init__(self, code: grpc.StatusCode, details: str, field: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.field = field
        # RESOURCE_EXHAUSTED: when the daemon expects a place in the model's queue to
        # free (its gRPC retry pushback); None when it did not say.
        self.retry_after_s = retry_after_s

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> RemoteError:
        field = retry_after_s = None
        for key, value in error.trailing_metadata() or ():
            if key == FIELD_METADATA_KEY:
                field = value
            elif key == PUSHBACK_METADATA_KEY and value.isdigit():  # gRFC A6: else no hint
                retry_after_s = int(value) / 1e3
        return cls(error.code(), error.details() or "", field, retry_after_s)


def build_request(
    model: str,
    prompt: str | Sequence[int] | None = None,
    *,
    messages: Sequence[Message] | None = None,
    stop: Sequence[str] = (),
    request_id: str = "",
    **sampling,
) -> pb.GenerateRequest:
    """A GenerateRequest of a prompt (text or token ids) or of chat `messages`, exactly
    one of them; sampling values left at None keep the daemon's defaults."""
    unknown = set(sampling) - set(SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
    if (prompt is None) == (messages is None):
        raise TypeError("give either a prompt or messages")
    params = pb.SamplingParams(
        stop=list(stop), **{k: v for k, v in sampling.items() if v is not None}
    )
    request = pb.GenerateRequest(model=model, sampling=params, request_id=request_id)
    if messages is not None:
        request.messages.messages.extend(pb.ChatMessage(role=role, content=content)
                                         for role, content in map(_pair, messages))
    elif isinstance(prompt, str):
        request.text = prompt
    else:
        request.token_ids.ids.extend(int(t) for t in prompt)
    return request


def _pair(message: Message) -> tuple[str, str]:
    if isinstance(message, Mapping):
        return message["role"], message["content"]
    role, content = message
    return role, content


class GenerateStream:
    """The messages of one Generate call, in order; `cancel()` stops it."""

    def __init__(self, call):
        self._call = call

    def __iter__(self) -> Iterator[pb.GenerateResponse]:
        try:
            yield from self._call
        except grpc.RpcError as e:
            raise RemoteError.from_rpc_error(e) from None

    def cancel(self) -> None:
        self._call.cancel()


class PowerStream(GenerateStream):
    """The PowerSample messages of one WatchPower call; `cancel()` stops it."""


def busy_retry_options(busy_retries: int) -> list[tuple[str, object]]:
    """Channel options with which gRPC itself retries a Generate or Classify refused with
    RESOURCE_EXHAUSTED up to `busy_retries` times (gRPC allows 4), after the daemon's
    `grpc-retry-pushback-ms` when it sent one, else an exponential jittered backoff."""
    if not 0 <= busy_retries <= MAX_BUSY_RETRIES:
        raise ValueError(f"busy_retries must be in [0, {MAX_BUSY_RETRIES}], got {busy_retries}")
    if busy_retries == 0:
        return []
    policy = {"maxAttempts": busy_retries + 1, "initialBackoff": "0.05s", "maxBackoff": "5s",
              "backoffMultiplier": 2, "retryableStatusCodes": ["RESOURCE_EXHAUSTED"]}
    service = pb.DESCRIPTOR.services_by_name["EdgeRuntime"].full_name
    config = {"methodConfig": [{"name": [{"service": service, "method": method}
                                         for method in ("Generate", "Classify")],
                                "retryPolicy": policy}]}
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


class EdgeClient:
    def __init__(self, target: str | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 security: ClientSecurity | None = None,  # TLS, token: client_security.py
                 busy_retries: int = 0):
        """`target`: host:port or unix:/path; None: where the CLI looks (module doc).
        `busy_retries`: how often a Generate or Classify refused because the model's
        queue is full is sent again, when the daemon says (busy_retry_options); 0: the
        caller gets RemoteError(RESOURCE_EXHAUSTED) with its retry_after_s at once."""
        self.target = local_target() if target is None else target
        self.channel = (security or ClientSecurity()).channel(self.target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *busy_retry_options(busy_retries),
        ])
        self.stub = pb_grpc.EdgeRuntimeStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def generate(
        self,
        model: str,
        prompt: str | Sequence[int],
        *,
        timeout_s: float | None = None,
        **options,
    ) -> GenerateStream:
        """Stream a generation; `options` are build_request's (sampling, stop, request_id)."""
        request = build_request(model, prompt, **options)
        return GenerateStream(self.stub.Generate(request, timeout=timeout_s))

    def chat(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        timeout_s: float | None = None,
        **options,
    ) -> GenerateStream:
        """Stream the assistant's reply to a conversation; `options` as generate()'s."""
        request = build_request(model, messages=messages, **options)
        return GenerateStream(self.stub.Generate(request, timeout=timeout_s))

    def watch_power(self, interval_ms: int = 0, max_samples: int = 0,
                    timeout_s: float | None = None) -> PowerStream:
        """Stream the daemon's power readings (about one per `interval_ms`; 0 = all)."""
        request = pb.WatchPowerRequest(interval_ms=interval_ms, max_samples=max_samples)
        return PowerStream(self.stub.WatchPower(request, timeout=timeout_s))

    def classify(self, model: str, images: Sequence[pb.Image], *, top_k: int = 0,
                 request_id: str = "", timeout_s: float | None = None) -> pb.ClassifyResponse:
        """Classify images (runtime/server/edge/convert.py builds Image messages)."""
        request = pb.ClassifyRequest(model=model, images=list(images), top_k=top_k,
                                     request_id=request_id)
        try:
            return self.stub.Classify(request, timeout=timeout_s)
        except grpc.RpcError as e:
            raise RemoteError.from_rpc_error(e) from None

    def classify_stream(self, requests: Iterator[pb.ClassifyRequest],
                        timeout_s: float | None = None) -> Iterator[pb.ClassifyResponse]:
        """One answer per request, in order; a failed request's answer has `error` set."""
        try:
            yield from self.stub.ClassifyStream(requests, timeout=timeout_s)
        except grpc.RpcError as e:
            raise RemoteError.from_rpc_error(e) from None

    def list_models(self, timeout_s: float | None = 10.0,
                    wait_for_ready: bool = False) -> list[pb.ModelInfo]:
        """`wait_for_ready`: wait (up to the timeout) for a daemon that is not up yet."""
        try:
            return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=timeout_s,
                                             wait_for_ready=wait_for_ready).models)
        except grpc.RpcError as e:
            raise RemoteError.from_rpc_error(e) from None

    def get_model(self, name: str, timeout_s: float | None = 10.0) -> pb.ModelInfo:
        try:
            return self.stub.GetModel(pb.GetModelRequest(name=name), timeout=timeout_s)
        except grpc.RpcError as e:
            raise RemoteError.from_rpc_error(e) from None

    def health(self, service: str = "", timeout_s: float | None = 10.0) -> str:
        """SERVING | NOT_SERVING | ... for the daemon ("") or a model (its name)."""
        try:
            response = self.health_stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as e:
            raise RemoteError.from_rpc_error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_loaded(self, timeout_s: float = 60.0) -> list[pb.ModelInfo]:
        """Wait until the daemon answers and none of its models is still loading."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = max(0.01, deadline - time.monotonic())
            try:
                models = self.list_models(timeout_s=remaining, wait_for_ready=True)
            except RemoteError as e:
                if e.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
                models = None
            if models is not None and all(m.state != pb.MODEL_STATE_LOADING for m in models):
                return models
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the daemon at {self.target} was not ready in {timeout_s}s")
            time.sleep(0.05)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
