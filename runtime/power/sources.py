"""Which power source a box has, asked once, and the one place sources are built.

`detect_source` is the `auto` rule, tried in this order:
  tegrastats on PATH -> jtop (jetson-stats installed, its socket present)
  -> an INA3221 in hwmon -> NVML with a GPU that reports power -> none.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Iterator
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


def source_checks(hwmon_root: Path | str = DEFAULT_HWMON_ROOT) -> Iterator[tuple[str, str | None]]:
    """(source name, why this box lacks it or None) in the `auto` order, each checked only
    when the caller asks for the next (NVML is started to see that it reports power)."""
    yield "tegrastats", None if shutil.which("tegrastats") else "tegrastats is not on PATH"
    if importlib.util.find_spec("jtop") is None:
        yield "jtop", "jetson-stats is not installed"
    else:
        yield "jtop", None if JTOP_SOCKET.exists() else f"no jtop service ({JTOP_SOCKET} absent)"
    found = find_ina3221_channels(hwmon_root)
    yield "hwmon", None if found else f"no INA3221 power monitor under {hwmon_root}"
    yield "nvml", _nvml_problem()


def detect_source(hwmon_root: Path | str = DEFAULT_HWMON_ROOT) -> str:
    """The name of the best power source this box has ('none' when it has none)."""
    for name, problem in source_checks(hwmon_root):
        if problem is None:
            return name
        logger.debug("auto power source: no %s: %s", name, problem)
    return "none"


def _nvml_problem() -> str | None:
    if importlib.util.find_spec("pynvml") is None:
        return "nvidia-ml-py is not installed"
    probe = NvmlSource(interval_ms=1000)
    try:
        probe.start()
    except BackendUnavailable as e:
        return str(e)
    probe.stop()
    return None


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
