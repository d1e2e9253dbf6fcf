"""The daemon's power monitor and each request's energy, as its services use them.

    accounting = EnergyAccounting(config.power or PowerConfig(), metrics.power)
    await accounting.start()         # source opened, idle baseline measured
    span = accounting.begin(request_id)      # when the request starts running
    ...run it...
    response.energy.CopyFrom(energy_to_proto(accounting.end(span)))  # the source is named
    await accounting.stop()

A request's energy window opens when it starts running (after admission, not while it
waits in a queue) and closes when it finishes. runtime/power/energy.py integrates the
board's power over the window and shares it equally among the requests running at
each instant (the attribution rule, in that module's docstring).

Two choices a reader should know:
- The window's end holds the latest reading instead of waiting for the next one, so
  no response is delayed by the sampling interval (at most one interval is held).
- When the readings have stopped (tegrastats died and is waiting to be restarted) for
  longer than `stale_s` at the window's end, the energy is reported unknown (absent),
  never extrapolated from a stale reading.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.power.config import PowerConfig
from runtime.power.energy import EnergyReport, Span
from runtime.power.hwmon import DEFAULT_HWMON_ROOT
from runtime.power.monitor import PowerMonitor
from runtime.proto.e2edge.v1 import runtime_pb2 as pb

if TYPE_CHECKING:  # prometheus_client is imported only when metrics are configured
    from runtime.power.metrics import PowerMetrics


def energy_to_proto(report: EnergyReport) -> pb.Energy:
    """An EnergyReport on the wire: unknown joules stay absent, never 0."""
    energy = pb.Energy(
        power_source=report.source, window_s=report.seconds, samples=report.samples
    )
    if report.joules is not None:
        energy.joules = report.joules
    if report.joules_above_idle is not None:
        energy.joules_above_idle = report.joules_above_idle
    return energy


def fill_generation_energy(stats: pb.GenerationStats, report: EnergyReport) -> None:
    """Energy and the per-token figures of a Generate request's final stats."""
    stats.energy.CopyFrom(energy_to_proto(report))
    joules_per_token = report.per_item(stats.completion_tokens)
    if joules_per_token is not None:
        stats.joules_per_token = joules_per_token
    tokens_per_joule = report.items_per_joule(stats.completion_tokens)
    if tokens_per_joule is not None:
        stats.tokens_per_joule = tokens_per_joule


class EnergyAccounting:
    """The power monitor and the per-request energy windows of one daemon."""

    def __init__(
        self,
        power: PowerConfig,
        power_metrics: PowerMetrics | None = None,
        hwmon_root: Path | str = DEFAULT_HWMON_ROOT,
    ):
        self.monitor = PowerMonitor(power, power_metrics, hwmon_root=hwmon_root)
        # Readings older than this at a window's end count as stopped (see the module doc).
        self.stale_s = max(1.0, 5 * self.monitor.source.interval_s)
        self._started = False

    @property
    def source_name(self) -> str:
        return self.monitor.source_name

    @property
    def measures(self) -> bool:
        """False for the `none` source: no readings, no energy."""
        return self.monitor.source.measures

    async def start(self) -> None:
        """Start sampling (measuring the idle baseline, off the loop)."""
        await asyncio.to_thread(self.monitor.start)
        self._started = True

    async def stop(self) -> None:
        """Stop the power source (safe when start failed)."""
        if self._started:
            self._started = False
            await asyncio.to_thread(self.monitor.stop)

    # ---- per request ---------------------------------------------------------------
    def begin(self, request_id: str) -> Span:
        """Open a request's window: call when it starts running."""
        return self.monitor.begin(request_id)

    def end(self, span: Span) -> EnergyReport:
        """Close the window now and return the request's share of the energy."""
        report = self.monitor.end(span)
        if report.joules is None:
            return report
        latest = self.monitor.latest()
        if latest is None or span.end - latest.t > self.stale_s:
            report = dataclasses.replace(report, joules=None, joules_above_idle=None)
            span.report = report
        return report

    def end_if_open(self, span: Span | None) -> EnergyReport | None:
        """The span's report, closing it first if nobody did (a request that ended early)."""
        if span is None:
            return None
        return span.report if span.end is not None else self.end(span)
