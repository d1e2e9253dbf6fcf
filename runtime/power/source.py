"""The one small interface every power source implements.

A source is started once, hands out samples one at a time with `next_sample`, and
is stopped once. Two shapes of hardware sit behind it:
- push sources produce readings on their own clock (tegrastats prints a line every
  interval); `next_sample` waits for the next one;
- polled sources are read on demand (hwmon files, NVML, jtop's cached stats);
  `PolledSource` turns them into the same shape by reading once per interval.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Iterator

from runtime.power.sample import PowerSample


class PowerSource(abc.ABC):
    """A stream of `PowerSample`s from one kind of power monitor."""

    name: str = "?"  # the name users pick it by (`power.source` in the config)
    measures: bool = True  # False only for the `none` source, which never yields

    def __init__(self, interval_ms: int):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        self.interval_ms = interval_ms

    @property
    def interval_s(self) -> float:
        return self.interval_ms / 1000.0

    def start(self) -> None:  # noqa: B027 - an optional hook, not every source opens anything
        """Open the hardware; raise BackendUnavailable with a clear reason when it can't."""

    def stop(self) -> None:  # noqa: B027 - an optional hook
        """Release the hardware; safe to call twice."""

    @abc.abstractmethod
    def next_sample(self, timeout: float) -> PowerSample | None:
        """Block until the next reading, at most `timeout` seconds; None when none came."""

    def __iter__(self) -> Iterator[PowerSample]:
        """Readings forever (until the caller stops iterating); waits as long as it takes."""
        while True:
            sample = self.next_sample(timeout=max(1.0, 5 * self.interval_s))
            if sample is not None:
                yield sample

    def __enter__(self) -> PowerSource:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class PolledSource(PowerSource):
    """A source read on demand: `read()` once per interval, on a fixed grid of ticks."""

    def __init__(self, interval_ms: int):
        super().__init__(interval_ms)
        self._next_tick: float | None = None
        self._stopped = threading.Event()

    @abc.abstractmethod
    def read(self) -> PowerSample:
        """One reading now."""

    def start(self) -> None:
        self._stopped.clear()
        self._next_tick = None

    def stop(self) -> None:
        self._stopped.set()

    def next_sample(self, timeout: float) -> PowerSample | None:
        now = time.monotonic()
        if self._next_tick is None:
            self._next_tick = now  # the first reading is immediate
        wait = self._next_tick - now
        if wait > timeout:
            self._stopped.wait(timeout)
            return None
        if wait > 0 and self._stopped.wait(wait):
            return None
        # Ticks stay on a grid so a slow read does not stretch every later interval.
        self._next_tick = max(self._next_tick + self.interval_s, time.monotonic())
        return self.read()
