"""The daemon: one grpc.aio server with EdgeRuntime, health checking and reflection.

    daemon, port = await create_server(config)   # bound (port 0 -> a free port), not started
    await daemon.start()                          # serving; models load in the background
    await daemon.wait_ready()                     # every model READY or FAILED
    await daemon.stop()                           # drain: see below

Health (grpc.health.v1): one service per model (its name) that is SERVING once the
model is READY and NOT_SERVING while it loads or after it failed; `e2edge.v1.EdgeRuntime`
and the overall service "" are SERVING once loading is over and at least one model is
READY. Everything turns NOT_SERVING when the drain starts.

Drain (SIGTERM/SIGINT in `e2edge serve`): new requests are refused with UNAVAILABLE,
in-flight streams (queued ones included) get `grace_period_s` to finish, then the
rest are cancelled, which stops their generation within one decode step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from runtime.config import DaemonConfig
from runtime.errors import ConfigError
from runtime.power.config import PowerConfig
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.proto.e2edge.v1 import runtime_pb2_grpc as pb_grpc
from runtime.server import kserve_service
from runtime.server.decode_pool import ImageDecoding
from runtime.server.energy_accounting import EnergyAccounting
from runtime.server.generate_service import EdgeRuntimeServicer
from runtime.server.model_registry import ModelEntry, ModelRegistry, ModelState
from runtime.server.reload import ModelLifecycle
from runtime.server.request_parsing import GuardedServer
from runtime.server.security import bind, token_auth

log = logging.getLogger("e2edge.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeRuntime"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
OVERALL = ""  # the health service name that stands for the whole daemon
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def client_target(listen: str, port: int) -> str:
    """The address a local client dials for a daemon bound on `listen` (at `port`)."""
    if listen.startswith("unix:"):
        return listen
    host = listen.rpartition(":")[0]
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}"


def _check_unix_socket_free(listen: str) -> None:
    """Refuse a socket path another process still serves on.

    gRPC replaces an existing socket file when it binds, which would leave a running
    daemon unreachable; a stale file (nobody accepting) is fine to replace.
    """
    path = listen[len("unix:"):]
    if path.startswith("//"):  # unix:///abs/path
        path = path[2:]
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return  # nobody is listening: a stale file from a daemon that died
    finally:
        probe.close()
    raise ConfigError(f"listen {listen}: another process is serving on this socket")


class Daemon:
    """The server, its models and their health; built by `create_server`."""

    def __init__(self, config: DaemonConfig):
        self.config = config
        self.registry = ModelRegistry(config.models)
        # Power source (default auto), per-request energy and the metrics endpoint.
        self.energy = EnergyAccounting(config.power or PowerConfig(), config.metrics,
                                       is_model=lambda name: name in self.registry.entries)
        # Classify's and KServe's image decoding: small ones on the loop, others on a thread.
        self.decoding = ImageDecoding(config.decode_threads, config.decode_inline_max_pixels)
        self.servicer = EdgeRuntimeServicer(self.registry, self.decoding, self.energy)
        self.health = health.aio.HealthServicer()
        self.auth = token_auth(config.auth)  # bearer tokens (off without `auth:`)
        self.server = grpc.aio.server(options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            # A second daemon on the same port must fail, not silently share it.
            ("grpc.so_reuseport", 0),
        ])
        # Every service behind auth (a refused call is never parsed), then parsing: bad
        # bytes -> INVALID_ARGUMENT (runtime/server/request_parsing.py).
        guarded = GuardedServer(self.server, self.auth)
        pb_grpc.add_EdgeRuntimeServicer_to_server(self.servicer, guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, guarded)
        self.kserve = kserve_service.add_to_server(self, guarded)  # KServe v2 / Triton's
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer([SERVICE_NAME, HEALTH_SERVICE_NAME,
                                               kserve_service.SERVICE_NAME,
                                               reflection.SERVICE_NAME]), guarded
        )
        if config.listen.startswith("unix:"):
            _check_unix_socket_free(config.listen)
        try:
            self.port = bind(self.server, config.listen, config.tls)  # TLS from `tls:`
        except RuntimeError as e:
            raise ConfigError(f"listen {config.listen}: cannot bind ({e})") from None
        if self.port == 0 and not config.listen.startswith("unix:"):
            raise ConfigError(f"listen {config.listen}: cannot bind (in use or not permitted)")
        self.target = client_target(config.listen, self.port)
        self._loading: asyncio.Task | None = None
        self.lifecycle = ModelLifecycle(self)  # SIGHUP reload, repository load/unload

    async def start(self) -> None:
        # First, while nothing runs yet: the idle baseline is measured now.
        await self.energy.start()
        for service in (OVERALL, SERVICE_NAME, *self.registry.entries):
            await self.health.set(service, NOT_SERVING)
        await self.server.start()
        log.info("listening on %s (%d models configured)", self.target, len(self.registry.entries))
        self._loading = asyncio.create_task(self._load_models())

    async def _load_models(self) -> None:
        await self.registry.load_all(self._model_changed)
        ready = [e.name for e in self.registry if e.state is ModelState.READY]
        failed = [e.name for e in self.registry if e.state is ModelState.FAILED]
        status = SERVING if ready else NOT_SERVING
        for service in (OVERALL, SERVICE_NAME):
            await self.health.set(service, status)
        log.info("ready on %s: models ready: %s; failed: %s", self.target,
                 ", ".join(ready) or "none", ", ".join(failed) or "none")

    async def _model_changed(self, entry: ModelEntry) -> None:
        await self.health.set(entry.name, SERVING if entry.state is ModelState.READY
                              else NOT_SERVING)

    async def wait_ready(self) -> None:
        """Until every model is READY or FAILED."""
        if self._loading is None:
            raise RuntimeError("the daemon is not started")
        await asyncio.shield(self._loading)

    def begin_draining(self) -> None:
        """Refuse new requests with UNAVAILABLE from now on (in-flight ones go on).

        Synchronous, so a signal handler can call it before it logs "draining": a
        request that arrives after that line is refused, never queued."""
        self.servicer.draining = True

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new requests, give in-flight ones `grace_s`, then cancel them."""
        grace_s = self.config.grace_period_s if grace_s is None else grace_s
        self.begin_draining()
        await self.health.enter_graceful_shutdown()
        log.info("draining: in-flight requests have %.1fs to finish", grace_s)
        self.energy.close_watchers()  # WatchPower streams end now, they never finish alone
        await self.server.stop(grace_s)
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()  # a load running on a thread finishes there, unused
        self.registry.close()
        self.decoding.close()
        await self.energy.stop()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def create_server(config: DaemonConfig) -> tuple[Daemon, int]:
    """Build the daemon and bind its address (port 0 picks a free port); not started."""
    daemon = Daemon(config)
    return daemon, daemon.port
