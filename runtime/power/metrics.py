"""Prometheus gauges of the board's power, fed by the sampler, on a registry the caller owns.

  e2edge_power_rail_milliwatts{rail}        gauge, last sample of each rail
  e2edge_power_total_milliwatts             gauge, last whole-board power
  e2edge_power_idle_milliwatts              gauge, idle baseline (when measured)
  e2edge_energy_joules_total                counter, board energy since start

The daemon's request counters live beside its HTTP endpoint (runtime/server/metrics.py);
both register on the same registry. Nothing is registered on prometheus_client's global
registry, so a test (or two daemons in one process) can build as many as it likes.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge

from runtime.power.sample import PowerSample


class PowerMetrics:
    """The power gauges; `observe_sample` is a sampler listener."""

    def __init__(self, registry: CollectorRegistry, namespace: str = "e2edge"):
        ns = namespace
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
