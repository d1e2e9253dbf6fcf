"""Prometheus metrics for power, energy and requests, on a registry the caller owns.

Nothing is registered on prometheus_client's global registry, so a test (or two
daemons in one process) can build as many `PowerMetrics` as it likes.

  e2edge_power_rail_milliwatts{rail}        gauge, last sample of each rail
  e2edge_power_total_milliwatts             gauge, last whole-board power
  e2edge_power_idle_milliwatts              gauge, idle baseline (when measured)
  e2edge_energy_joules_total                counter, board energy since start
  e2edge_requests_total{model,kind,status}  counter
  e2edge_request_latency_seconds{model,kind} histogram
  e2edge_tokens_total{model}                counter, generated tokens
  e2edge_images_total{model}                counter, classified images
  e2edge_model_energy_joules_total{model}   counter, energy attributed to the model
  e2edge_process_cpu_seconds_total          counter, the daemon's CPU time (Linux), with
                                            e2edge_process_resident_memory_bytes and the
                                            other standard process metrics: CPU seconds
                                            per image or token is rate(cpu) / rate(images)
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from runtime.power.energy import EnergyReport
from runtime.power.sample import PowerSample

# Latency buckets from a 5 ms image classification to a 2-minute generation.
LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0
)


class PowerMetrics:
    """The daemon's metrics; `observe_sample` is a sampler listener."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "e2edge"):
        self.registry = registry
        ns = namespace
        # The serving process's own CPU and memory: on a small board the cores bound
        # throughput, and CPU time is a share of the energy (empty where /proc is absent).
        ProcessCollector(namespace=ns, registry=registry)
        self.rail_mw = Gauge(
            "power_rail_milliwatts", "Power of each rail, last sample",
            ["rail"], namespace=ns, registry=registry,
        )
        self.total_mw = Gauge(
            "power_total_milliwatts", "Whole-board power, last sample",
            namespace=ns, registry=registry,
        )
        self.idle_mw = Gauge(
            "power_idle_milliwatts", "Idle baseline measured at start-up",
            namespace=ns, registry=registry,
        )
        self.energy_j = Counter(
            "energy_joules", "Board energy integrated since start",
            namespace=ns, registry=registry,
        )
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
        self._lock = threading.Lock()
        self._last: PowerSample | None = None

    def observe_sample(self, sample: PowerSample) -> None:
        """Update the gauges and the energy counter with a new sample."""
        for rail, mw in sample.rails_mw.items():
            self.rail_mw.labels(rail=rail).set(mw)
        self.total_mw.set(sample.total_mw)
        with self._lock:
            last, self._last = self._last, sample
        if last is not None and sample.t > last.t:
            self.energy_j.inc(0.5 * (last.total_mw + sample.total_mw) * (sample.t - last.t) / 1e3)

    def set_idle(self, idle_mw: float | None) -> None:
        if idle_mw is not None:
            self.idle_mw.set(idle_mw)

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
