"""Power sources, sampling, energy accounting, the power log and metrics.

The daemon needs `PowerConfig`, `PowerMonitor` and, for its metrics endpoint,
`PowerMetrics` + `start_metrics_server` (metrics.py imports prometheus_client).
"""

from runtime.power.config import SOURCE_NAMES, PowerConfig
from runtime.power.energy import (
    EnergyMeter,
    EnergyReport,
    PowerCurve,
    Span,
    attributed_energy,
    energy_between,
)
from runtime.power.monitor import PowerMonitor
from runtime.power.power_log import PowerLog
from runtime.power.sample import INPUT_RAILS, PowerSample, total_mw
from runtime.power.sampler import PowerSampler
from runtime.power.source import PolledSource, PowerSource
from runtime.power.sources import detect_source, open_source

__all__ = [
    "INPUT_RAILS",
    "SOURCE_NAMES",
    "EnergyMeter",
    "EnergyReport",
    "PolledSource",
    "PowerConfig",
    "PowerCurve",
    "PowerLog",
    "PowerMonitor",
    "PowerSample",
    "PowerSampler",
    "PowerSource",
    "Span",
    "attributed_energy",
    "detect_source",
    "energy_between",
    "open_source",
    "total_mw",
]
