"""Which power source a box has, asked once, and the one place sources are built.

`detect_source` is the `auto` rule, tried in this order:
  tegrastats on PATH -> jtop (jetson-stats installed, its socket present)
  -> an INA3221 in hwmon -> NVML with a GPU that reports power -> none.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from runtime.errors import BackendUnavailable
from runtime.power.config import SOURCE_NAMES
from runtime.power.hwmon import DEFAULT_HWMON_ROOT, HwmonSource, find_ina3221_channels
from runtime.power.jtop_source import JTOP_SOCKET, JtopSource
from runtime.power.none_source import NoneSource
from runtime.power.nvml import NvmlSource
from runtime.power.source import PowerSource
from runtime.power.tegrastats import TegrastatsSource

logger = logging.getLogger(__name__)


def detect_source(hwmon_root: Path | str = DEFAULT_HWMON_ROOT) -> str:
    """The name of the best power source this box has ('none' when it has none)."""
    if shutil.which("tegrastats") is not None:
        return "tegrastats"
    if importlib.util.find_spec("jtop") is not None and JTOP_SOCKET.exists():
        return "jtop"
    if find_ina3221_channels(hwmon_root):
        return "hwmon"
    if importlib.util.find_spec("pynvml") is not None and _nvml_reports_power():
        return "nvml"
    return "none"


def _nvml_reports_power() -> bool:
    probe = NvmlSource(interval_ms=1000)
    try:
        probe.start()
    except BackendUnavailable as e:
        logger.info("auto power source: skipping nvml: %s", e)
        return False
    probe.stop()
    return True


def open_source(
    name: str, interval_ms: int, hwmon_root: Path | str = DEFAULT_HWMON_ROOT
) -> PowerSource:
    """A (not yet started) source by its config name; 'auto' picks by `detect_source`."""
    if name not in SOURCE_NAMES:
        raise ValueError(f"unknown power source {name!r}; known: {', '.join(SOURCE_NAMES)}")
    if name == "auto":
        name = detect_source(hwmon_root)
        logger.info("auto power source: %s", name)
    if name == "tegrastats":
        return TegrastatsSource(interval_ms)
    if name == "jtop":
        return JtopSource(interval_ms)
    if name == "hwmon":
        return HwmonSource(interval_ms, root=hwmon_root)
    if name == "nvml":
        return NvmlSource(interval_ms)
    return NoneSource(interval_ms)
