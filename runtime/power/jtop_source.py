"""Power from jetson-stats (`jtop().power`), when it is installed and its service runs.

jtop reads the same INA3221 monitors as tegrastats from its root service and shares
them over /run/jtop.sock, so it works for an unprivileged user. Its `power` property:

  {"rail": {"VDD_CPU_GPU_CV": {"volt": 5000, "curr": 180, "power": 900, "avg": 850, ...},
            ...},
   "tot":  {"power": 4520, "avg": 4600, "name": "VDD_IN"}}

jtop takes the input rail out of "rail" and names it in "tot"; here it is put back
among the rails so that every source reports the same rail set and the same total.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from runtime.errors import BackendUnavailable
from runtime.power.sample import PowerSample, total_mw
from runtime.power.source import PolledSource

JTOP_SOCKET = Path("/run/jtop.sock")


def sample_from_jtop_power(power: Mapping, t: float) -> PowerSample:
    """A sample from the dict `jtop().power` returns (shape in the module doc)."""
    rails = {
        str(name): float(values["power"])
        for name, values in power.get("rail", {}).items()
        if "power" in values
    }
    tot = power.get("tot", {})
    if "name" in tot and "power" in tot:
        rails.setdefault(str(tot["name"]), float(tot["power"]))
    if rails:
        return PowerSample(t=t, total_mw=total_mw(rails), rails_mw=rails)
    if "power" in tot:
        return PowerSample(t=t, total_mw=float(tot["power"]), rails_mw={})
    raise BackendUnavailable("power source jtop: jtop reports no power rails on this board")


class JtopSource(PolledSource):
    """Power from a running jtop service, read once per interval."""

    name = "jtop"

    def __init__(self, interval_ms: int):
        super().__init__(interval_ms)
        self._jetson = None

    def start(self) -> None:
        super().start()
        try:
            from jtop import JtopException, jtop
        except ImportError as e:
            raise BackendUnavailable(
                "power source jtop: jetson-stats is not installed "
                "(pip install jetson-stats, or the e2edge[jetson] extra)"
            ) from e
        jetson = jtop(interval=max(self.interval_s, 0.1))
        try:
            jetson.start()
        except JtopException as e:
            raise BackendUnavailable(
                f"power source jtop: the jtop service is not running ({e}); "
                "start it with 'sudo systemctl restart jtop.service'"
            ) from e
        self._jetson = jetson

    def stop(self) -> None:
        super().stop()
        if self._jetson is not None:
            self._jetson.close()
            self._jetson = None

    def read(self) -> PowerSample:
        if self._jetson is None:
            raise RuntimeError("JtopSource.read() before start()")
        return sample_from_jtop_power(self._jetson.power, time.monotonic())
