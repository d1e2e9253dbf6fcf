"""Energy over a time window, and its fair share for each of several concurrent requests.

Integration. Power between two samples is taken as the straight line joining them,
so the energy of a window [t0, t1] is the trapezoid rule over the samples inside it,
with the power at t0 and t1 interpolated from the samples on either side. Where the
window reaches past the first or last sample, the nearest sample's power is held
(`EnergyReport.held_s` says for how long). Constant power P gives P*(t1-t0) exactly;
power that is linear between samples gives its exact integral.

Above idle. The idle baseline is the board's power with nothing running (measured at
start-up). Power above idle is max(0, P(t) - idle); crossings of the baseline are
found exactly, so the clamp does not bend the integral.

Attribution by overlap. At each instant, the power (total, and above idle) is split
equally among the requests active at that instant. A request's energy is the integral
of its share over its own window:

    E_i = integral over [start_i, end_i] of P(t) / N(t) dt,  N(t) = requests active at t

So two requests that fully overlap get half each; a request alone gets all of it;
the shares of all requests sum to the energy of the time when any request ran. The
rule charges every request for the board as a whole (idle included) in the `joules`
figure, and only for the work above idle in `joules_above_idle`.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from runtime.power.sample import PowerSample


@dataclass(frozen=True)
class EnergyReport:
    """The energy of one window (or one request's share of it)."""

    joules: float | None  # None when the source gives no samples (source "none")
    joules_above_idle: float | None  # None also when no idle baseline was measured
    source: str  # the power source's name, reported in every response
    samples: int  # samples used, including the two that bracket the window
    seconds: float  # length of the window
    idle_mw: float | None = None
    held_s: float = 0.0  # seconds of the window outside the samples' span (power held)

    def per_item(self, count: int) -> float | None:
        """Joules per token / per image; None without energy or items."""
        if self.joules is None or count <= 0:
            return None
        return self.joules / count

    def items_per_joule(self, count: int) -> float | None:
        """Tokens per joule; None without energy."""
        if self.joules is None or self.joules <= 0:
            return None
        return count / self.joules

    def to_dict(self) -> dict:
        return asdict(self)


class PowerCurve:
    """Power as a piecewise-linear function of time through (t, mW) points."""

    def __init__(self, times: Sequence[float], values_mw: Sequence[float]):
        if len(times) != len(values_mw) or not times:
            raise ValueError("a power curve needs as many values as times, at least one")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError("sample times must increase strictly")
        self.times = list(times)
        self.values = list(values_mw)

    @classmethod
    def of_total(cls, samples: Sequence[PowerSample]) -> PowerCurve:
        return cls([s.t for s in samples], [s.total_mw for s in samples])

    def above(self, baseline_mw: float) -> PowerCurve:
        """max(0, P(t) - baseline), with the points where P crosses the baseline added."""
        times, values = [self.times[0]], [self.values[0] - baseline_mw]
        for t, v in zip(self.times[1:], self.values[1:]):
            v -= baseline_mw
            t_prev, v_prev = times[-1], values[-1]
            if (v_prev < 0 < v) or (v < 0 < v_prev):
                times.append(t_prev + (t - t_prev) * (-v_prev) / (v - v_prev))
                values.append(0.0)
            times.append(t)
            values.append(v)
        return PowerCurve(times, [max(0.0, v) for v in values])

    def at(self, t: float) -> float:
        """Power at t: linear between points, held beyond the first and last."""
        i = bisect.bisect_right(self.times, t)
        if i == 0:
            return self.values[0]
        if i == len(self.times):
            return self.values[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        v0, v1 = self.values[i - 1], self.values[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def integral_mj(self, a: float, b: float) -> float:
        """Exact integral over [a, b] in millijoules (mW * s)."""
        if b <= a:
            return 0.0
        lo, hi = bisect.bisect_right(self.times, a), bisect.bisect_left(self.times, b)
        points = [a, *self.times[lo:hi], b]
        total = 0.0
        for t0, t1 in zip(points, points[1:]):
            total += 0.5 * (self.at(t0) + self.at(t1)) * (t1 - t0)
        return total

    def held_s(self, a: float, b: float) -> float:
        """How much of [a, b] lies outside the points' span."""
        before = max(0.0, min(b, self.times[0]) - a)
        after = max(0.0, b - max(a, self.times[-1]))
        return before + after


def _samples_used(samples: Sequence[PowerSample], t0: float, t1: float) -> int:
    """Samples inside [t0, t1] plus the one on each side used to interpolate the edges."""
    times = [s.t for s in samples]
    lo, hi = bisect.bisect_left(times, t0), bisect.bisect_right(times, t1)
    return (hi - lo) + (1 if lo > 0 else 0) + (1 if hi < len(times) else 0)


def attributed_energy(
    samples: Sequence[PowerSample],
    t0: float,
    t1: float,
    others: Sequence[tuple[float, float]] = (),
    idle_mw: float | None = None,
    source: str = "?",
) -> EnergyReport:
    """One request's share of the energy in [t0, t1], by the overlap rule.

    `others` are the (start, end) windows of the other requests that overlap this one
    (a request still running has end = +inf). With no others this is simply the
    energy of the window.
    """
    seconds = max(0.0, t1 - t0)
    if not samples:
        return EnergyReport(None, None, source, 0, seconds, idle_mw, held_s=seconds)
    total = PowerCurve.of_total(samples)
    above = total.above(idle_mw) if idle_mw is not None else None
    # Between consecutive cut points the number of active requests is constant.
    cuts = sorted({t0, t1, *(t for span in others for t in span if t0 < t < t1)})
    starts = sorted(start for start, _ in others)
    ends = sorted(end for _, end in others)
    joules_mj, above_mj = 0.0, 0.0
    for a, b in zip(cuts, cuts[1:]):
        mid = 0.5 * (a + b)
        # others with start <= mid < end: those started by mid less those ended by then
        active = 1 + bisect.bisect_right(starts, mid) - bisect.bisect_right(ends, mid)
        joules_mj += total.integral_mj(a, b) / active
        if above is not None:
            above_mj += above.integral_mj(a, b) / active
    return EnergyReport(
        joules=joules_mj / 1e3,
        joules_above_idle=above_mj / 1e3 if above is not None else None,
        source=source,
        samples=_samples_used(samples, t0, t1),
        seconds=seconds,
        idle_mw=idle_mw,
        held_s=total.held_s(t0, t1),
    )


def energy_between(
    samples: Sequence[PowerSample],
    t0: float,
    t1: float,
    idle_mw: float | None = None,
    source: str = "?",
) -> EnergyReport:
    """The whole board's energy in [t0, t1] (no sharing)."""
    return attributed_energy(samples, t0, t1, (), idle_mw, source)


@dataclass(eq=False)
class Span:
    """One request's time window, opened by `EnergyMeter.begin`."""

    request_id: str
    start: float
    end: float | None = None
    report: EnergyReport | None = field(default=None, repr=False)


def _mark_ended(span: Span) -> None:
    if span.end is not None:
        raise ValueError(f"request {span.request_id}: energy span ended twice")
    span.end = time.monotonic()


class EnergyMeter:
    """Per-request energy from a sampler's history, shared by overlap (module doc).

    `begin` when a request starts running, `end` when it finishes. The meter keeps a
    finished request's window while it overlaps one still running (or not yet
    reported), since that one's share depends on it; older windows are dropped.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self._lock = threading.Lock()
        self._active: list[Span] = []
        self._unreported: list[Span] = []  # ended, energy not yet computed
        self._finished: collections.deque[Span] = collections.deque()  # ordered by end

    def begin(self, request_id: str) -> Span:
        span = Span(str(request_id), time.monotonic())
        if not self.sampler.source.measures:  # no readings to share: nothing to track
            return span
        with self._lock:
            self._active.append(span)
        return span

    def end(self, span: Span, wait_s: float = 0.0) -> EnergyReport:
        """Close `span` now and return its energy.

        With `wait_s` > 0, wait up to that long for a sample after the end, so the
        window's last edge is interpolated rather than held (this adds up to one
        sampling interval to the call; the default does not wait).
        """
        if not self.sampler.source.measures:
            return self._unmeasured(span)
        self._close(span)
        if wait_s > 0:
            self.sampler.wait_for_sample_after(span.end, timeout=wait_s)
        return self._report(span)

    async def end_async(self, span: Span, wait_s: float = 0.0) -> EnergyReport:
        """`end` for asyncio code: the window closes now, the waiting runs off the loop."""
        if not self.sampler.source.measures:
            return self._unmeasured(span)
        self._close(span)
        if wait_s <= 0:
            return self._report(span)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.sampler.wait_for_sample_after, span.end, wait_s)
        return self._report(span)

    def active_ids(self) -> list[str]:
        with self._lock:
            return [span.request_id for span in self._active]

    def _unmeasured(self, span: Span) -> EnergyReport:
        """The `none` source: the window's length and the source's name, no energy.

        Its spans are never tracked (nothing to share), so a daemon without a power
        source pays no bookkeeping per request.
        """
        _mark_ended(span)
        span.report = attributed_energy((), span.start, span.end, (),
                                        idle_mw=self.sampler.idle_mw,
                                        source=self.sampler.source_name)
        return span.report

    def _close(self, span: Span) -> None:
        with self._lock:
            _mark_ended(span)
            self._active = [s for s in self._active if s is not span]
            self._unreported.append(span)
            self._finished.append(span)

    def _report(self, span: Span) -> EnergyReport:
        t0, t1 = span.start, span.end
        with self._lock:
            others = [
                (s.start, s.end if s.end is not None else float("inf"))
                for s in [*self._active, *self._finished]
                if s is not span and s.start < t1 and (s.end is None or s.end > t0)
            ]
        span.report = attributed_energy(
            self.sampler.samples(t0, t1),
            t0,
            t1,
            others,
            idle_mw=self.sampler.idle_mw,
            source=self.sampler.source_name,
        )
        with self._lock:
            self._unreported = [s for s in self._unreported if s is not span]
            # Reports still to come start no earlier than this: older windows can go.
            cutoff = min((s.start for s in [*self._active, *self._unreported]), default=t1)
            while self._finished and self._finished[0].end <= cutoff:
                self._finished.popleft()
        return span.report
