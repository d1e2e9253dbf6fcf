"""The daemon: one grpc.aio server with EdgeRuntime, KServe v2, health and reflection.

    daemon, port = await create_server(config)   # bound (port 0 -> a free port), not started
    await daemon.start()                          # serving; models load in the background
    await daemon.wait_ready()                     # every model READY or FAILED
    await daemon.stop()                           # drain: see below

Its rooms: core/ (the models: registry, lifecycle, admission, batching, generation,
health), edge/ (the EdgeRuntime API), kserve/ (the KServe v2 API), guard/ (what every
call passes: auth, parsing, errors, the request log), energy.py and metrics.py.
Health (grpc.health.v1): core/health.py.

Drain (SIGTERM/SIGINT in `e2edge serve`): new requests are refused with UNAVAILABLE,
in-flight streams (queued ones included) get `grace_period_s` to finish, then the
rest are cancelled, which stops their generation within one decode step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from runtime.config import DaemonConfig, load_config, with_listen
from runtime.errors import ConfigError
from runtime.power.config import PowerConfig
from runtime.proto.e2edge.v1 import runtime_pb2_grpc as pb_grpc
from runtime.server.core import request_cpu
from runtime.server.core.decode_pool import ImageDecoding
from runtime.server.core.health import HEALTH_SERVICE_NAME, SERVICE_NAME, DaemonHealth
from runtime.server.core.lifecycle import ModelLifecycle, ReloadReport
from runtime.server.core.registry import ModelRegistry, ModelState
from runtime.server.core.serving_state import ServingState
from runtime.server.edge.servicer import EdgeRuntimeServicer
from runtime.server.energy import EnergyAccounting
from runtime.server.guard.request_parsing import GuardedServer
from runtime.server.guard.security import bind, token_auth
from runtime.server.kserve import service as kserve_service
from runtime.server.metrics import MetricsEndpoint
from runtime.server.sd_notify import Notifier, models_status

log = logging.getLogger("e2edge.server")


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
        self.registry = ModelRegistry(config.models)
        self.state = ServingState()  # the drain, as every service sees it
        self.health = DaemonHealth()
        self.auth = token_auth(config.auth)  # bearer tokens (off without `auth:`)
        # SIGHUP reload, repository load/unload; owns the config as last applied.
        self.lifecycle = ModelLifecycle(config, self.registry, self.health, self.auth,
                                        self.wait_ready)
        # The metrics endpoint (with `metrics:`), then the power source (default auto)
        # and per-request energy, which feeds the endpoint's power gauges.
        self.metrics = None if config.metrics is None else MetricsEndpoint(
            config.metrics, is_model=lambda name: name in self.registry.entries,
            scheduler=self.registry.scheduler)
        self.energy = EnergyAccounting(config.power or PowerConfig(),
                                       self.metrics.power if self.metrics else None)
        # Classify's and KServe's image decoding: small ones on the loop, others on a thread.
        self.decoding = ImageDecoding(config.decode_threads, config.decode_inline_max_pixels)
        self.servicer = EdgeRuntimeServicer(self.registry, self.decoding, self.state,
                                            self.energy, self.metrics)
        self.kserve = kserve_service.KServeServicer(self.registry, self.lifecycle,
                                                    self.decoding, self.state)
        self.server = grpc.aio.server(options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            # A second daemon on the same port must fail, not silently share it.
            ("grpc.so_reuseport", 0),
        ])
        # Every service behind auth (a refused call is never parsed), then parsing: bad
        # bytes -> INVALID_ARGUMENT (runtime/server/guard/request_parsing.py).
        guarded = GuardedServer(self.server, self.auth)
        pb_grpc.add_EdgeRuntimeServicer_to_server(self.servicer, guarded)
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, guarded)
        kserve_service.add_to_server(self.kserve, guarded)  # KServe v2 / Triton's
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
        self._unmeter: Callable[[], None] = lambda: None

    @property
    def config(self) -> DaemonConfig:
        """The config as last applied (a reload changes it; see core/lifecycle.py)."""
        return self.lifecycle.config

    async def start(self) -> None:
        # Each call's CPU time on the loop is charged to its model (core/request_cpu.py).
        self._unmeter = request_cpu.install(asyncio.get_running_loop())
        # First, while nothing runs yet: the idle baseline is measured now.
        await self.energy.start()
        if self.metrics is not None:
            await self.metrics.start()
        await self.health.starting(self.registry.entries)
        await self.server.start()
        log.info("listening on %s (%d models configured)", self.target, len(self.registry.entries))
        self._loading = asyncio.create_task(self._load_models())

    async def _load_models(self) -> None:
        await self.registry.load_all(self.health.model_changed)
        self.state.loaded = True
        ready = [e.name for e in self.registry if e.state is ModelState.READY]
        failed = [e.name for e in self.registry if e.state is ModelState.FAILED]
        await self.health.set_overall(bool(ready))
        log.info("ready on %s: models ready: %s; failed: %s", self.target,
                 ", ".join(ready) or "none", ", ".join(failed) or "none")

    async def wait_ready(self) -> None:
        """Until every model is READY or FAILED."""
        if self._loading is None:
            raise RuntimeError("the daemon is not started")
        await asyncio.shield(self._loading)

    def begin_draining(self) -> None:
        """Refuse new requests with UNAVAILABLE from now on (in-flight ones go on).

        Synchronous, so a signal handler can call it before it logs "draining": a
        request that arrives after that line is refused, never queued."""
        self.state.draining = True

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new requests, give in-flight ones `grace_s`, then cancel them."""
        grace_s = self.config.grace_period_s if grace_s is None else grace_s
        self.begin_draining()
        await self.health.drain()
        log.info("draining: in-flight requests have %.1fs to finish", grace_s)
        if self.servicer.power_watchers is not None:  # WatchPower streams never end alone
            self.servicer.power_watchers.close_all()
        await self.server.stop(grace_s)
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()  # a load running on a thread finishes there, unused
        self.registry.close()
        self.decoding.close()
        if self.metrics is not None:
            await self.metrics.stop()
        await self.energy.stop()
        self._unmeter()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    async def reload_config_file(self, notifier: Notifier,
                                 listen_override: str | None = None) -> ReloadReport:
        """SIGHUP: re-read the config file and apply it, telling systemd as it goes.

        `listen_override` is `e2edge serve --listen`: it still beats the file's address.
        """
        log.info("SIGHUP received: reloading %s", self.config.source)
        notifier.reloading()
        try:
            config = load_config(self.config.source)
            if listen_override:
                config = with_listen(config, listen_override)
        except ConfigError as e:
            report = ReloadReport(error=str(e))
        else:
            report = await self.lifecycle.reload(config)
        level = logging.WARNING if report.error or report.failed else logging.INFO
        log.log(level, "%s", report.summary())
        status = models_status(self.registry)
        notifier.ready(status if not report.error else f"{status}; last reload refused")
        return report


async def create_server(config: DaemonConfig) -> tuple[Daemon, int]:
    """Build the daemon and bind its address (port 0 picks a free port); not started."""
    daemon = Daemon(config)
    return daemon, daemon.port
