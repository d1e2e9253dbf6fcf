"""A background thread that reads a power source into a bounded ring buffer.

The buffer holds `history_s` worth of samples; the energy meter reads windows of it.
At start-up the sampler can measure the idle baseline: the median total power over a
short window before any request runs (the median, so that one spike from start-up
work does not move it).

Listeners (the power log, the metrics, a WatchPower stream) are called on the
sampler's thread with each new sample; they must be quick and must not block.
"""

from __future__ import annotations

import collections
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable

from runtime.power.sample import PowerSample
from runtime.power.source import PowerSource

logger = logging.getLogger(__name__)

Listener = Callable[[PowerSample], None]

# Failures of the source or of a listener: logged for the first few, then once per this many.
_LOG_FIRST_ERRORS = 3
_LOG_EVERY_ERRORS = 100


class PowerSampler:
    """Samples `source` on a thread; thread-safe reads of the recent history."""

    def __init__(self, source: PowerSource, history_s: float = 600.0):
        self.source = source
        self.capacity = max(16, math.ceil(history_s / source.interval_s) + 1)
        self._buffer: collections.deque[PowerSample] = collections.deque(maxlen=self.capacity)
        self._new_sample = threading.Condition()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.idle_mw: float | None = None
        self.energy_total_j = 0.0  # integral of total power over every sample seen
        self.errors = 0

    @property
    def source_name(self) -> str:
        return self.source.name

    def add_listener(self, listener: Listener) -> None:
        with self._new_sample:
            self._listeners = [*self._listeners, listener]

    def remove_listener(self, listener: Listener) -> None:
        with self._new_sample:
            self._listeners = [fn for fn in self._listeners if fn is not listener]

    def start(self, idle_window_s: float = 0.0) -> None:
        """Start the source and the thread; then measure the idle baseline if asked."""
        self.source.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
        self._thread.start()
        if idle_window_s > 0 and self.source.measures:
            self.idle_mw = self.measure_idle(idle_window_s)

    def stop(self) -> None:
        self._stop.set()
        self.source.stop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def measure_idle(self, window_s: float) -> float | None:
        """Median total power over the next `window_s` seconds (None without samples)."""
        t0 = time.monotonic()
        self.wait_for_sample_after(t0 + window_s, timeout=window_s + 5 * self.source.interval_s)
        totals = [s.total_mw for s in self.samples(t0, t0 + window_s, bracket=False)]
        if not totals:
            logger.warning("no power sample in the %.1f s idle window: no idle baseline", window_s)
            return None
        return float(statistics.median(totals))

    def latest(self) -> PowerSample | None:
        with self._new_sample:
            return self._buffer[-1] if self._buffer else None

    def samples(
        self, t0: float | None = None, t1: float | None = None, bracket: bool = True
    ) -> list[PowerSample]:
        """Samples with t0 <= t <= t1 (all when both are None), oldest first.

        With `bracket`, the nearest sample before t0 and after t1 come too, so the
        caller can interpolate at the window's edges.
        """
        with self._new_sample:
            buffered = list(self._buffer)
        lo = -math.inf if t0 is None else t0
        hi = math.inf if t1 is None else t1
        first = next((i for i, s in enumerate(buffered) if s.t >= lo), len(buffered))
        last = next((i for i in range(len(buffered) - 1, -1, -1) if buffered[i].t <= hi), -1)
        if bracket:
            first = max(first - 1, 0)
            last = min(last + 1, len(buffered) - 1)
        return buffered[first : last + 1]

    def wait_for_sample_after(self, t: float, timeout: float) -> bool:
        """Wait until a sample newer than `t` is buffered; False on timeout."""
        with self._new_sample:
            return self._new_sample.wait_for(
                lambda: bool(self._buffer) and self._buffer[-1].t > t, timeout
            )

    def _run(self) -> None:
        wait = max(0.05, min(0.5, 2 * self.source.interval_s))
        while not self._stop.is_set():
            try:
                sample = self.source.next_sample(timeout=wait)
            except Exception:  # a flaky sensor must not end sampling: log, wait, retry
                self._log_error("power source %s failed", self.source.name)
                self._stop.wait(self.source.interval_s)
                continue
            if sample is None:
                continue
            with self._new_sample:
                previous = self._buffer[-1] if self._buffer else None
                if previous is not None and sample.t <= previous.t:
                    continue  # out of order: the ring stays sorted by time
                if previous is not None:
                    dt = sample.t - previous.t
                    self.energy_total_j += 0.5 * (previous.total_mw + sample.total_mw) * dt / 1e3
                self._buffer.append(sample)
                listeners = self._listeners
                self._new_sample.notify_all()
            for listener in listeners:
                try:
                    listener(sample)
                except Exception:  # one broken consumer must not starve the others
                    self._log_error("power listener %r failed", listener)

    def _log_error(self, message: str, *args) -> None:
        self.errors += 1
        if self.errors <= _LOG_FIRST_ERRORS or self.errors % _LOG_EVERY_ERRORS == 0:
            logger.exception(message + " (%d errors so far)", *args, self.errors)
