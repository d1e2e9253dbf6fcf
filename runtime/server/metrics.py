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
  e2edge_scheduler_busy_seconds_total{model}  counter, seconds the model held its execution
                                            slots (runtime/server/core/scheduler.py)
  e2edge_scheduler_handling_seconds_total{model} counter, CPU seconds its requests cost the
                                            daemon outside its units (gRPC, parsing, image
                                            decoding, answers; core/request_cpu.py),
                                            charged to its share
  e2edge_scheduler_queue_seconds_total{model} counter, seconds its units of work waited for
                                            their turn, summed
  e2edge_scheduler_units_total{model}       counter, units run (decode steps, prefills, batches)
  e2edge_scheduler_shed_requests_total{model} counter, requests dropped before they ran: their
                                            deadline passed or their client left while they
                                            waited (refusals of a full queue are requests_total
                                            with status RESOURCE_EXHAUSTED)
  e2edge_scheduler_share{model}             gauge, its configured share (a relative weight);
  e2edge_scheduler_priority{model}          gauge; e2edge_scheduler_slots{model,resource}
                                            and e2edge_scheduler_capacity{resource}: what it
                                            holds while it runs, of what the box has
  + the power gauges of runtime/power/metrics.py, on the same registry.

A model's share of the box over a window, as the scheduler divides it, is
rate(busy_seconds) + rate(handling_seconds) / slots (on the CPU) over the models' sum.

    endpoint = MetricsEndpoint(config.metrics, is_model, scheduler)   # registry + counters
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from runtime.config import MetricsConfig
from runtime.errors import ConfigError
from runtime.power.energy import EnergyReport
from runtime.power.metrics import PowerMetrics
from runtime.server.core.scheduler import Scheduler

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


class SchedulerMetrics:
    """The scheduler's accounts, read when /metrics is scraped (a custom collector: the
    worker threads never touch a Prometheus object on their hot path)."""

    def __init__(self, scheduler: Scheduler, namespace: str = "e2edge"):
        self.scheduler = scheduler
        self.prefix = f"{namespace}_scheduler"

    def collect(self):
        usage = self.scheduler.usage()
        schedules = self.scheduler.schedules()
        p = self.prefix
        counters = [
            (CounterMetricFamily(f"{p}_busy_seconds", "Seconds the model held its execution "
                                 "slots", labels=["model"]), "busy_s"),
            (CounterMetricFamily(f"{p}_handling_seconds", "CPU seconds the model's requests "
                                 "cost the daemon outside its units of work (gRPC, parsing, "
                                 "image decoding, answers), charged to its share",
                                 labels=["model"]), "handling_s"),
            (CounterMetricFamily(f"{p}_queue_seconds", "Seconds the model's units of work "
                                 "waited for their turn, summed", labels=["model"]), "queue_s"),
            (CounterMetricFamily(f"{p}_units", "Units of work run (decode steps, prefills, "
                                 "batches)", labels=["model"]), "units"),
            (CounterMetricFamily(f"{p}_shed_requests", "Requests dropped before they ran: "
                                 "deadline passed or client left while waiting",
                                 labels=["model"]), "shed"),
        ]
        for family, key in counters:
            for model, account in usage.items():
                family.add_metric([model], getattr(account, key))
            yield family
        share = GaugeMetricFamily(f"{p}_share", "Configured share of the box's execution "
                                  "time (a weight relative to the other models')",
                                  labels=["model"])
        priority = GaugeMetricFamily(f"{p}_priority", "Configured priority (higher first)",
                                     labels=["model"])
        slots = GaugeMetricFamily(f"{p}_slots", "Execution slots the model holds while it "
                                  "runs", labels=["model", "resource"])
        for model, schedule in schedules.items():
            share.add_metric([model], schedule.share)
            priority.add_metric([model], schedule.priority)
            slots.add_metric([model, schedule.resource], schedule.slots)
        capacity = GaugeMetricFamily(f"{p}_capacity", "Execution slots of the box",
                                     labels=["resource"])
        for resource, count in self.scheduler.capacity.items():
            capacity.add_metric([resource], count)
        yield from (share, priority, slots, capacity)


def start_metrics_server(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1"):
    """Serve `registry` at http://addr:port/metrics on a daemon thread.

    Returns (server, bound_port); port 0 binds a free port. Stop it with
    `server.shutdown(); server.server_close()`.
    """
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server, server.server_address[1]


class MetricsEndpoint:
    """The registry, its counters and gauges, and the HTTP server that serves them."""

    def __init__(self, config: MetricsConfig, is_model: Callable[[str], bool] = lambda _: True,
                 scheduler: Scheduler | None = None):
        self.config = config
        self.is_model = is_model  # does the config serve this model name (label values)
        self.registry = CollectorRegistry()
        self.power = PowerMetrics(self.registry)
        self.requests = RequestMetrics(self.registry)
        if scheduler is not None:
            self.registry.register(SchedulerMetrics(scheduler))
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
