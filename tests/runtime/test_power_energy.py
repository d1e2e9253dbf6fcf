"""Energy: trapezoid integration, idle baseline, attribution by overlap, the meter."""

from __future__ import annotations

import asyncio
import random
import time

import fake_tegrastats
import numpy as np
import pytest

from runtime.power.energy import (
    EnergyMeter,
    PowerCurve,
    attributed_energy,
    energy_between,
)
from runtime.power.none_source import NoneSource
from runtime.power.sample import PowerSample
from runtime.power.sampler import PowerSampler
from runtime.power.tegrastats import TegrastatsSource


def samples_of(times, values_mw):
    return [PowerSample(t=t, total_mw=v, rails_mw={"VDD_IN": v}) for t, v in zip(times, values_mw)]


def test_constant_power_gives_p_times_t_exactly():
    times = [0.0, 0.13, 0.4, 0.41, 1.7, 2.0]  # irregular, as a busy reader delivers them
    samples = samples_of(times, [4520.0] * len(times))
    report = energy_between(samples, 0.05, 1.95, source="tegrastats")
    assert report.joules == pytest.approx(4.520 * 1.9, rel=1e-12)
    assert report.seconds == pytest.approx(1.9)
    assert report.held_s == 0
    assert report.source == "tegrastats"
    assert report.samples == 6  # 4 inside + one on each side for the edges


def test_piecewise_linear_power_gives_its_exact_integral():
    # P(t): 1 W at 0 s, 3 W at 1 s, 2 W at 2 s and 3 s. Over [0.5, 2.5]:
    # 0.5 s averaging 2.5 W + 1 s averaging 2.5 W + 0.5 s at 2 W = 4.75 J
    samples = samples_of([0.0, 1.0, 2.0, 3.0], [1000.0, 3000.0, 2000.0, 2000.0])
    assert energy_between(samples, 0.5, 2.5).joules == pytest.approx(4.75, rel=1e-12)
    curve = PowerCurve.of_total(samples)
    assert curve.at(0.5) == 2000.0 and curve.at(1.5) == 2500.0  # edges interpolated


def test_random_piecewise_linear_power_matches_a_fine_numerical_integral():
    rng = random.Random(7)
    for _ in range(20):
        times = np.cumsum([rng.uniform(0.01, 0.3) for _ in range(30)])
        values = [rng.uniform(2000, 30000) for _ in range(30)]
        t0 = rng.uniform(times[0], times[10])
        t1 = rng.uniform(times[15], times[-1])
        grid = np.linspace(t0, t1, 400_001)
        power = np.interp(grid, times, values)
        fine = float(np.sum(0.5 * (power[1:] + power[:-1]) * np.diff(grid))) / 1e3
        exact = energy_between(samples_of(times.tolist(), values), t0, t1).joules
        assert exact == pytest.approx(fine, rel=1e-9)


def test_power_is_held_beyond_the_samples():
    samples = samples_of([0.0, 1.0], [1000.0, 3000.0])
    report = energy_between(samples, -1.0, 0.5)
    # 1 s held at 1 W, then 0.5 s rising from 1 W to 2 W
    assert report.joules == pytest.approx(1.0 + 0.75)
    assert report.held_s == pytest.approx(1.0)


def test_above_idle_clamps_at_zero_and_finds_the_crossing():
    samples = samples_of([0.0, 1.0], [1000.0, 5000.0])
    report = energy_between(samples, 0.0, 1.0, idle_mw=3000.0)
    assert report.joules == pytest.approx(3.0)
    # above idle from t = 0.5 s, rising to 2 W at 1 s: 0.5 J
    assert report.joules_above_idle == pytest.approx(0.5, rel=1e-12)
    assert report.idle_mw == 3000.0


def test_without_baseline_or_samples_energy_is_unknown_not_zero():
    samples = samples_of([0.0, 1.0], [1000.0, 1000.0])
    assert energy_between(samples, 0.0, 1.0).joules_above_idle is None
    empty = energy_between([], 0.0, 1.0, idle_mw=1000.0, source="none")
    assert empty.joules is None and empty.joules_above_idle is None and empty.samples == 0
    assert empty.per_item(10) is None and empty.items_per_joule(10) is None


def test_two_overlapping_requests_split_the_shared_time():
    samples = samples_of([0.0, 3.0], [6000.0, 6000.0])  # a constant 6 W
    a = attributed_energy(samples, 0.0, 2.0, others=[(1.0, 3.0)], idle_mw=2000.0)
    b = attributed_energy(samples, 1.0, 3.0, others=[(0.0, 2.0)], idle_mw=2000.0)
    assert a.joules == pytest.approx(6 * 1 + 3 * 1)  # alone for 1 s, half for 1 s
    assert b.joules == pytest.approx(9.0)
    assert a.joules_above_idle == pytest.approx(4 * 1 + 2 * 1)
    assert a.joules + b.joules == pytest.approx(energy_between(samples, 0.0, 3.0).joules)


def test_attribution_sums_to_the_energy_of_the_busy_time():
    rng = random.Random(11)
    times = np.cumsum([rng.uniform(0.05, 0.2) for _ in range(200)]).tolist()
    samples = samples_of(times, [rng.uniform(3000, 20000) for _ in times])
    spans = []
    for _ in range(12):
        start = rng.uniform(times[0], times[-1] - 3)
        spans.append((start, start + rng.uniform(0.1, 3.0)))
    spans.append((times[-1] - 1.0, times[-1] - 0.5))  # one request alone
    idle = 2500.0
    shares = [
        attributed_energy(samples, s, e, [o for o in spans if o is not span], idle_mw=idle)
        for span in spans
        for s, e in [span]
    ]
    # the busy time: the union of the request windows
    union, (cur_s, cur_e) = [], sorted(spans)[0]
    for s, e in sorted(spans)[1:]:
        if s <= cur_e:
            cur_e = max(cur_e, e)
        else:
            union.append((cur_s, cur_e))
            cur_s, cur_e = s, e
    union.append((cur_s, cur_e))
    busy = [energy_between(samples, s, e, idle_mw=idle) for s, e in union]
    assert sum(r.joules for r in shares) == pytest.approx(sum(r.joules for r in busy), rel=1e-9)
    assert sum(r.joules_above_idle for r in shares) == pytest.approx(
        sum(r.joules_above_idle for r in busy), rel=1e-9
    )


def test_report_figures_per_token_and_per_image():
    report = energy_between(samples_of([0.0, 2.0], [5000.0, 5000.0]), 0.0, 2.0)
    assert report.per_item(40) == pytest.approx(0.25)  # J per token
    assert report.items_per_joule(40) == pytest.approx(4.0)  # tokens per J
    assert report.to_dict()["joules"] == pytest.approx(10.0)


def test_meter_with_replayed_constant_power(tmp_path, monkeypatch):
    """Two overlapping requests against the fake tegrastats replaying a constant 5 W."""
    line = (
        "RAM 2201/7620MB (lfb 83x4MB) CPU [5%@729,3%@729] GR3D_FREQ 0%@[305] "
        "cpu@48.5C VDD_IN 5000mW/5000mW VDD_CPU_GPU_CV 1200mW/1200mW VDD_SOC 1300mW/1300mW"
    )
    lines = tmp_path / "constant.txt"
    lines.write_text(line + "\n")
    fake_tegrastats.install(tmp_path / "bin", monkeypatch, lines)
    sampler = PowerSampler(TegrastatsSource(interval_ms=20), history_s=30)
    sampler.start(idle_window_s=0.2)
    meter = EnergyMeter(sampler)
    try:
        assert sampler.idle_mw == 5000.0
        a = meter.begin("a")
        time.sleep(0.15)
        b = meter.begin("b")
        assert meter.active_ids() == ["a", "b"]
        time.sleep(0.15)
        report_a = meter.end(a, wait_s=1.0)
        time.sleep(0.1)
        report_b = asyncio.run(meter.end_async(b, wait_s=1.0))
    finally:
        sampler.stop()
    shared = a.end - b.start
    assert report_a.joules == pytest.approx(5.0 * ((b.start - a.start) + shared / 2), rel=1e-9)
    assert report_b.joules == pytest.approx(5.0 * (shared / 2 + (b.end - a.end)), rel=1e-9)
    assert report_a.joules + report_b.joules == pytest.approx(5.0 * (b.end - a.start), rel=1e-9)
    assert report_a.joules_above_idle == pytest.approx(0.0, abs=1e-12)
    assert report_a.source == "tegrastats" and report_a.samples >= 5
    assert report_a.held_s == 0.0  # waited for the sample after the end
    assert meter.active_ids() == []
    with pytest.raises(ValueError, match="ended twice"):
        meter.end(a)


def test_meter_on_the_none_source_reports_no_energy():
    sampler = PowerSampler(NoneSource(interval_ms=50), history_s=10)
    sampler.start(idle_window_s=1.0)  # the none source skips the idle window
    try:
        meter = EnergyMeter(sampler)
        span = meter.begin("r1")
        assert meter.active_ids() == []  # nothing to share out: no bookkeeping per request
        time.sleep(0.02)
        report = meter.end(span)
        with pytest.raises(ValueError, match="ended twice"):
            meter.end(span)
    finally:
        sampler.stop()
    assert sampler.idle_mw is None
    assert report.joules is None and report.joules_above_idle is None
    assert report.source == "none" and report.samples == 0
    assert 0.02 <= report.seconds < 1.0 and span.report is report
