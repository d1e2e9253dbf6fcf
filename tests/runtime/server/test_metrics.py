"""Prometheus metrics: the rails, energy and request counters, scraped over HTTP."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from runtime.power.energy import energy_between
from runtime.power.metrics import PowerMetrics
from runtime.power.tegrastats_parse import parse_line
from runtime.server.metrics import RequestMetrics, start_metrics_server

DATA = Path(__file__).resolve().parents[1] / "data" / "tegrastats"


def orin_samples():
    lines = (DATA / "orin_nano_jp6.txt").read_text().splitlines()
    return [parse_line(line, t=100.0 + 0.5 * i) for i, line in enumerate(lines)]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


def served(registry: CollectorRegistry) -> str:
    """The registry's page, served over HTTP on a free port and scraped once."""
    server, port = start_metrics_server(registry, 0)
    try:
        return scrape(port)
    finally:
        server.shutdown()
        server.server_close()


def value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in the scrape")


def test_scrape_shows_rails_energy_and_requests():
    registry = CollectorRegistry()
    metrics = PowerMetrics(registry)
    requests = RequestMetrics(registry)
    samples = orin_samples()
    for sample in samples:
        metrics.observe_sample(sample)
    metrics.set_idle(5073.0)
    report = energy_between(samples, samples[0].t, samples[-1].t, source="tegrastats")
    requests.observe_request("tinyllama", "generate", "OK", 0.8, tokens=32, energy=report)
    requests.observe_request("retina-vit", "classify", "OK", 0.012, images=4)
    requests.observe_request("retina-vit", "classify", "INVALID_ARGUMENT", 0.001)

    text = served(registry)

    last = samples[-1]
    assert value(text, 'e2edge_power_rail_milliwatts{rail="VDD_IN"}') == last.rails_mw["VDD_IN"]
    assert value(text, 'e2edge_power_rail_milliwatts{rail="VDD_SOC"}') == 2667.0
    assert value(text, "e2edge_power_total_milliwatts") == 11204.0
    assert value(text, "e2edge_power_idle_milliwatts") == 5073.0
    # trapezoid over the three samples 0.5 s apart
    expected_j = 0.5 * 0.5 * (17946 + 5073) / 1e3 + 0.5 * 0.5 * (5073 + 11204) / 1e3
    assert value(text, "e2edge_energy_joules_total") == pytest.approx(expected_j)
    assert report.joules == pytest.approx(expected_j)
    assert value(text, 'e2edge_model_energy_joules_total{model="tinyllama"}') == pytest.approx(
        expected_j
    )
    assert value(text, 'e2edge_tokens_total{model="tinyllama"}') == 32
    assert value(text, 'e2edge_images_total{model="retina-vit"}') == 4
    ok = 'e2edge_requests_total{kind="classify",model="retina-vit",status="OK"}'
    bad = 'e2edge_requests_total{kind="classify",model="retina-vit",status="INVALID_ARGUMENT"}'
    assert value(text, ok) == 1 and value(text, bad) == 1
    count = 'e2edge_request_latency_seconds_count{kind="classify",model="retina-vit"}'
    assert value(text, count) == 2
    le = 'e2edge_request_latency_seconds_bucket{kind="classify",le="0.005",model="retina-vit"}'
    assert value(text, le) == 1
    # The daemon's own CPU time and memory, for CPU seconds per image or token.
    assert value(text, "e2edge_process_cpu_seconds_total") > 0
    assert value(text, "e2edge_process_resident_memory_bytes") > 10e6


def test_each_registry_is_independent():
    first, second = CollectorRegistry(), CollectorRegistry()
    PowerMetrics(first).observe_sample(orin_samples()[0])
    PowerMetrics(second)  # the same names again: fine on another registry
    RequestMetrics(first)
    RequestMetrics(second)
    assert first.get_sample_value("e2edge_power_total_milliwatts") == 17946.0
    assert second.get_sample_value("e2edge_power_total_milliwatts") == 0.0


def test_scrape_shows_the_schedulers_accounts_per_model():
    from runtime.server.core.fair_queue import Schedule
    from runtime.server.core.scheduler import Scheduler
    from runtime.server.metrics import SchedulerMetrics

    now = [0.0]  # a fake clock
    scheduler = Scheduler({"cpu": 2, "gpu": 1}, clock=lambda: now[0])
    scheduler.set("vit", Schedule(share=3, priority=1, slots=1))
    scheduler.set("llm", Schedule(share=1, slots=2))
    with scheduler.gate("vit").turn() as run:  # starts at 0, ends at 0.75
        assert run
        now[0] = 0.75
    scheduler.gate("llm").shed(2)
    now[0] = 2.0
    registry = CollectorRegistry()
    registry.register(SchedulerMetrics(scheduler))
    text = served(registry)
    assert value(text, 'e2edge_scheduler_busy_seconds_total{model="vit"}') == 0.75
    assert value(text, 'e2edge_scheduler_busy_seconds_total{model="llm"}') == 0.0
    assert value(text, 'e2edge_scheduler_units_total{model="vit"}') == 1.0
    assert value(text, 'e2edge_scheduler_queue_seconds_total{model="vit"}') == 0.0
    assert value(text, 'e2edge_scheduler_shed_requests_total{model="llm"}') == 2.0
    assert value(text, 'e2edge_scheduler_share{model="vit"}') == 3.0
    assert value(text, 'e2edge_scheduler_priority{model="vit"}') == 1.0
    assert value(text, 'e2edge_scheduler_slots{model="llm",resource="cpu"}') == 2.0
    assert value(text, 'e2edge_scheduler_capacity{resource="cpu"}') == 2.0
