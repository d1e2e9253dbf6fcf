"""The `none` power source: no power monitor, so no samples and no energy figures.

Responses then report the source as "none" and leave energy out, rather than claim
zero joules.
"""

from __future__ import annotations

import threading

from runtime.power.sample import PowerSample
from runtime.power.source import PowerSource


class NoneSource(PowerSource):
    """A source that never yields a sample."""

    name = "none"
    measures = False

    def __init__(self, interval_ms: int = 1000):
        super().__init__(interval_ms)
        self._stopped = threading.Event()

    def start(self) -> None:
        self._stopped.clear()

    def stop(self) -> None:
        self._stopped.set()

    def next_sample(self, timeout: float) -> PowerSample | None:
        self._stopped.wait(timeout)
        return None
