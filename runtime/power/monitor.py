"""Everything the daemon needs about power, built from `PowerConfig`, started as one.

  source (auto-detected once) -> PowerSampler (ring buffer, idle baseline)
      -> listeners: PowerLog (JSON lines, with the active request ids), PowerMetrics
  EnergyMeter over the sampler: begin(request_id) / end(span) -> EnergyReport
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.power.config import PowerConfig
from runtime.power.energy import EnergyMeter, EnergyReport, Span
from runtime.power.hwmon import DEFAULT_HWMON_ROOT
from runtime.power.power_log import PowerLog
from runtime.power.sample import PowerSample
from runtime.power.sampler import Listener, PowerSampler
from runtime.power.sources import open_source

if TYPE_CHECKING:  # prometheus_client is imported only by whoever builds the metrics
    from runtime.power.metrics import PowerMetrics

logger = logging.getLogger(__name__)


class PowerMonitor:
    """Power source + sampler + energy meter + power log + metrics, for one daemon."""

    def __init__(
        self,
        config: PowerConfig,
        metrics: PowerMetrics | None = None,
        hwmon_root: Path | str = DEFAULT_HWMON_ROOT,
    ):
        self.config = config
        self.metrics = metrics
        self.source = open_source(config.source, config.interval_ms, hwmon_root=hwmon_root)
        self.sampler = PowerSampler(self.source, history_s=config.history_s)
        self.meter = EnergyMeter(self.sampler)
        self.log: PowerLog | None = None

    @property
    def source_name(self) -> str:
        return self.source.name

    @property
    def idle_mw(self) -> float | None:
        return self.sampler.idle_mw

    def start(self) -> None:
        """Open the source, start sampling, measure the idle baseline (blocks that long)."""
        if self.config.log is not None:
            self.log = PowerLog(self.config.log, self.config.log_max_bytes, self.config.log_backups)
            self.sampler.add_listener(self._write_log)
        if self.metrics is not None:
            self.sampler.add_listener(self.metrics.observe_sample)
        try:
            self.sampler.start(idle_window_s=self.config.idle_window_s)
        except BaseException:
            if self.log is not None:
                self.log.close()
            raise
        if self.metrics is not None:
            self.metrics.set_idle(self.sampler.idle_mw)
        logger.info(
            "power: source %s every %d ms, idle %s mW",
            self.source_name, self.config.interval_ms,
            f"{self.idle_mw:.0f}" if self.idle_mw is not None else "unknown",
        )

    def stop(self) -> None:
        self.sampler.stop()
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> PowerMonitor:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def begin(self, request_id: str) -> Span:
        return self.meter.begin(request_id)

    def end(self, span: Span, wait_s: float = 0.0) -> EnergyReport:
        return self.meter.end(span, wait_s)

    async def end_async(self, span: Span, wait_s: float = 0.0) -> EnergyReport:
        return await self.meter.end_async(span, wait_s)

    def latest(self) -> PowerSample | None:
        return self.sampler.latest()

    def add_listener(self, listener: Listener) -> None:
        self.sampler.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.sampler.remove_listener(listener)

    def _write_log(self, sample: PowerSample) -> None:
        assert self.log is not None
        self.log.write(sample, self.meter.active_ids())
