"""The one warm-up + cosine learning-rate schedule of every training loop."""

from __future__ import annotations

import pytest

from exporter.schedule import warmup_cosine


def test_warm_up_is_linear_to_the_peak():
    assert [warmup_cosine(s, 4, 20, peak=2.0) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]


def test_decay_is_a_half_cosine_from_the_peak_to_the_floor():
    rates = [warmup_cosine(s, 2, 12, peak=1e-3, floor=1e-5) for s in range(2, 13)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5)
    assert rates[5] == pytest.approx((1e-3 + 1e-5) / 2)  # half way: the mean of both
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_without_warm_up_it_starts_at_the_peak():
    assert warmup_cosine(0, 0, 10) == 1.0 and warmup_cosine(10, 0, 10, floor=0.1) == 0.1
