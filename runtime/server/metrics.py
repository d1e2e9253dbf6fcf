"""The daemon's Prometheus endpoint: request counters beside the power gauges.

  e2edge_requests_total{model,kind,status}  counter
  e2edge_request_latency_seconds{model,kind} histogram
  e2edge_tokens_total{model}                counter, generated tokens
  e2edge_images_total{model}                counter, classified images
  e2edge_model_energy_joules_total{model}   counter, energy attributed to the model
  e2edge_process_cpu_seconds_total          counter, the daemon's CPU time (Linux), with
                                            e2edge_process_resident_memory_bytes and the
                                            other standard process metrics: CPU seconds
                                            per image or token is rate(cpu) / rate(images)
  + the power gauges of runtime/power/metrics.py, on the same registry.

    endpoint = MetricsEndpoint(config.metrics, is_model)   # registry + counters
    monitor = PowerMonitor(..., endpoint.power)            # the sampler feeds the gauges
    await endpoint.start()                                 # http://listen/metrics
    endpoint.observe("classify", model, "OK", latency_s, images=n, energy=report)
    await endpoint.stop()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from runtime.config import MetricsConfig
from runtime.errors import ConfigError
from runtime.power.energy import EnergyReport
from runtime.power.metrics import PowerMetrics

log = logging.getLogger("e2edge.server")

# Latency buckets from a 5 ms image classification to a 2-minute generation.
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0
)
# The model label for requests naming a model the config does not have: client text
# must not create label values (it cannot clash: model names start alphanumeric).
UNKNOWN_MODEL = "_unknown"


class RequestMetrics:
    """Counters of finished requests, on a registry the caller owns."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "e2edge"):
        ns = namespace
        # The serving process's own CPU and memory: on a small board the cores bound
        # throughput, and CPU time is a share of the energy (empty where /proc is absent).
        ProcessCollector(namespace=ns, registry=registry)
        self.requests = Counter(
            "requests", "Requests served", ["model", "kind", "status"],
            namespace=ns, registry=registry,
        )
        self.latency_s = Histogram(
            "request_latency_seconds", "Request latency", ["model", "kind"],
            buckets=LATENCY_BUCKETS_S, namespace=ns, registry=registry,
        )
        self.tokens = Counter(
            "tokens", "Generated tokens", ["model"], namespace=ns, registry=registry,
        )
        self.images = Counter(
            "images", "Classified images", ["model"], namespace=ns, registry=registry,
        )
        self.model_energy_j = Counter(
            "model_energy_joules", "Energy attributed to the model's requests",
            ["model"], namespace=ns, registry=registry,
        )

    def observe_request(
        self,
        model: str,
        kind: str,
        status: str,
        latency_s: float,
        tokens: int = 0,
        images: int = 0,
        energy: EnergyReport | None = None,
    ) -> None:
        """Count one finished request (kind 'generate' or 'classify'; status 'OK' or a code)."""
        self.requests.labels(model=model, kind=kind, status=status).inc()
        self.latency_s.labels(model=model, kind=kind).observe(latency_s)
        if tokens:
            self.tokens.labels(model=model).inc(tokens)
        if images:
            self.images.labels(model=model).inc(images)
        if energy is not None and energy.joules is not None:
            self.model_energy_j.labels(model=model).inc(energy.joules)


def start_metrics_server(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1"):
    """Serve `registry` at http://addr:port/metrics on a daemon thread.

    Returns (server, bound_port); port 0 binds a free port. Stop it with
    `server.shutdown(); server.server_close()`.
    """
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server, server.server_address[1]


class MetricsEndpoint:
    """The registry, its counters and gauges, and the HTTP server that serves them."""

    def __init__(self, config: MetricsConfig, is_model: Callable[[str], bool] = lambda _: True):
        self.config = config
        self.is_model = is_model  # does the config serve this model name (label values)
        self.registry = CollectorRegistry()
        self.power = PowerMetrics(self.registry)
        self.requests = RequestMetrics(self.registry)
        self.port: int | None = None
        self._http = None

    async def start(self) -> None:
        await asyncio.to_thread(self._start_http)

    def _start_http(self) -> None:
        listen = self.config.listen
        host, _, port = listen.rpartition(":")
        try:
            self._http, self.port = start_metrics_server(self.registry, int(port),
                                                         addr=host.strip("[]"))
        except OSError as e:
            raise ConfigError(f"metrics.listen {listen}: cannot bind ({e.strerror or e})") from e
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    async def stop(self) -> None:
        """Stop the HTTP server (safe when it never started)."""
        if self._http is not None:
            http, self._http = self._http, None
            await asyncio.to_thread(_shutdown_http, http)

    def observe(self, kind: str, model: str, status: str, latency_s: float, tokens: int = 0,
                images: int = 0, energy: EnergyReport | None = None) -> None:
        """Count one finished request (kind 'generate' | 'classify')."""
        self.requests.observe_request(
            model if self.is_model(model) else UNKNOWN_MODEL, kind, status, latency_s,
            tokens=tokens, images=images, energy=energy,
        )


def _shutdown_http(server) -> None:
    server.shutdown()
    server.server_close()
