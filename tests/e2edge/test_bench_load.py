"""`e2edge bench load`: the mix, the statistics, and a short real run against `e2edge serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from e2edge.bench.load import (
    Outcome,
    kinds_by_client,
    parse_mix,
    percentile,
    run_clients,
    scheduler_state,
    scheduler_window,
    summarize,
)

pytestmark = pytest.mark.timeout(120)


def test_parse_mix():
    assert parse_mix("generate:classify") == {"generate": 1.0, "classify": 1.0}
    assert parse_mix("generate=3:classify=1") == {"generate": 3.0, "classify": 1.0}
    assert parse_mix("generate") == {"generate": 1.0}
    for bad in ("generate:resize", "generate=x", "generate=0", "generate:generate"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)


def test_kinds_by_client_split_the_clients_by_the_weights():
    assert kinds_by_client({"generate": 1, "classify": 1}, 64).count("classify") == 32
    assert kinds_by_client({"generate": 1, "classify": 3}, 7) == ["generate"] * 2 + ["classify"] * 5
    assert kinds_by_client({"generate": 1}, 3) == ["generate"] * 3
    assert sorted(kinds_by_client({"generate": 2, "classify": 1}, 1)) == ["generate"]


def test_mix_by_client_keeps_each_client_on_its_kind():
    """run_clients with a workload that only records who asked for what."""
    asked: dict[int, set[str]] = {}

    class Recording:
        mix = {"generate": 1.0, "classify": 1.0}

        def run_one(self, client, kind):
            import threading
            asked.setdefault(threading.get_ident(), set()).add(kind)
            time.sleep(0.001)
            return Outcome(kind, "OK", time.monotonic(), 0.001)

    run_clients("127.0.0.1:1", None, Recording(), 4, 0.0, 0.3, mix_by="client")
    assert sorted(kind for kinds in asked.values() for kind in kinds) == [
        "classify", "classify", "generate", "generate"]  # one kind each, half and half
    asked.clear()
    run_clients("127.0.0.1:1", None, Recording(), 4, 0.0, 0.3, mix_by="request")
    assert [len(kinds) for kinds in asked.values()] == [2, 2, 2, 2]  # ~75 draws each


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) == 0.0


def test_summary_keeps_deliberate_shedding_apart_from_errors():
    outcomes = [Outcome("generate", "OK", 0.0, 0.1, tokens=10),
                Outcome("generate", "OK", 0.0, 0.3, tokens=10),
                Outcome("generate", "RESOURCE_EXHAUSTED", 0.0, 0.001),
                Outcome("classify", "OK", 0.0, 0.02, images=1),
                Outcome("classify", "INTERNAL", 0.0, 0.02)]
    report = summarize(outcomes, 2.0)
    assert report["requests"] == 5
    assert report["errors"] == {"INTERNAL": 1}
    assert report["resource_exhausted"] == 1
    generate = report["kinds"]["generate"]
    assert generate["ok"] == 2 and generate["tokens_per_s"] == 10.0
    assert generate["p50_ms"] == 100.0 and generate["p99_ms"] == 300.0
    assert report["kinds"]["classify"]["images_per_s"] == 0.5


def test_a_short_run_against_a_real_daemon(tmp_path, tiny_llama_package):
    config = tmp_path / "daemon.yaml"
    config.write_text(f"grace_period_s: 2\nmodels:\n  - name: demo\n"
                      f"    path: {tiny_llama_package}\n    max_concurrent: 2\n"
                      f"    max_queue: 2\n")
    out = tmp_path / "load.json"
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "bench", "load", "--config", str(config),
         "--clients", "6", "--duration", "3", "--warmup", "1", "--mix", "generate",
         "--max-new-tokens", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    generate = report["kinds"]["generate"]
    assert generate["ok"] > 10 and generate["tokens_per_s"] > 0
    assert report["errors"] == {}
    assert report["resource_exhausted"] > 0  # 6 clients on 2 slots + 2 queue places
    assert report["memory"]["rss_end_mb"] > 0
    assert "requests in 3s from 6 clients" in result.stdout
    # --config serves the daemon's metrics: its scheduler saw the model busy
    demo = report["scheduler"]["models"]["demo"]
    assert demo["busy_s"] > 0 and demo["units"] > 0 and demo["busy_fraction"] == 1.0
    # its 6 clients' calls cost the daemon CPU outside the decode steps: charged to it
    assert demo["handling_s"] > 0 and demo["charged_fraction"] == 1.0
    assert (demo["share"], demo["share_fraction"], demo["shed_requests"]) == (1.0, 1.0, 0)
    assert report["machine"]["cores"] >= 1
    assert "demo: busy" in result.stdout


METRICS_BEFORE = """\
# TYPE e2edge_scheduler_busy_seconds counter
e2edge_scheduler_busy_seconds_total{model="llm"} 10.0
e2edge_scheduler_busy_seconds_total{model="vit"} 5.0
# TYPE e2edge_scheduler_handling_seconds counter
e2edge_scheduler_handling_seconds_total{model="vit"} 1.0
# TYPE e2edge_scheduler_units counter
e2edge_scheduler_units_total{model="llm"} 100.0
e2edge_scheduler_units_total{model="vit"} 50.0
# TYPE e2edge_scheduler_share gauge
e2edge_scheduler_share{model="llm"} 1.0
e2edge_scheduler_share{model="vit"} 3.0
# TYPE e2edge_scheduler_slots gauge
e2edge_scheduler_slots{model="llm",resource="cpu"} 2.0
e2edge_scheduler_slots{model="vit",resource="cpu"} 2.0
# TYPE e2edge_scheduler_capacity gauge
e2edge_scheduler_capacity{resource="cpu"} 2.0
e2edge_scheduler_capacity{resource="gpu"} 1.0
# TYPE e2edge_requests counter
e2edge_requests_total{kind="generate",model="llm",status="OK"} 3.0
"""


def test_the_scheduler_window_is_read_from_two_scrapes():
    before = scheduler_state(METRICS_BEFORE)
    after = scheduler_state(METRICS_BEFORE.replace("10.0", "12.5").replace(" 5.0", " 12.5")
                            .replace("100.0", "130.0")
                            .replace('handling_seconds_total{model="vit"} 1.0',
                                     'handling_seconds_total{model="vit"} 3.0'))
    assert before["capacity"] == {"cpu": 2, "gpu": 1}
    window = scheduler_window(before, after, measured_s=10.0)["models"]
    assert window["llm"]["busy_s"] == 2.5 and window["vit"]["busy_s"] == 7.5
    assert (window["vit"]["busy_fraction"], window["vit"]["share_fraction"]) == (0.75, 0.75)
    assert window["vit"]["busy_of_wall"] == 0.75
    # 2 CPU seconds of the ViT's request handling, over its 2 slots: charged 7.5 + 1 s
    assert window["vit"]["handling_s"] == 2.0 and window["llm"]["handling_s"] == 0.0
    assert window["vit"]["charged_fraction"] == round(8.5 / 11, 3)
    assert (window["llm"]["units"], window["vit"]["units"]) == (30, 0)
    assert window["llm"]["resource"] == "cpu" and window["llm"]["slots"] == 2


def test_a_mix_without_a_matching_model_is_an_error(tmp_path, tiny_llama_package):
    config = tmp_path / "daemon.yaml"
    config.write_text(f"models:\n  - name: demo\n    path: {tiny_llama_package}\n")
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "bench", "load", "--config", str(config),
         "--duration", "1", "--mix", "classify"], capture_output=True, text=True, timeout=90)
    assert result.returncode == 1
    assert "no ready model for it" in result.stderr
