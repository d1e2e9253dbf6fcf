"""`e2edge bench load`: the mix, the statistics, and a short real run against `e2edge serve`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from e2edge.bench.load import Outcome, parse_mix, percentile, summarize

pytestmark = pytest.mark.timeout(120)


def test_parse_mix():
    assert parse_mix("generate:classify") == {"generate": 1.0, "classify": 1.0}
    assert parse_mix("generate=3:classify=1") == {"generate": 3.0, "classify": 1.0}
    assert parse_mix("generate") == {"generate": 1.0}
    for bad in ("generate:resize", "generate=x", "generate=0", "generate:generate"):
        with pytest.raises(ValueError, match="--mix"):
            parse_mix(bad)


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


def test_a_mix_without_a_matching_model_is_an_error(tmp_path, tiny_llama_package):
    config = tmp_path / "daemon.yaml"
    config.write_text(f"models:\n  - name: demo\n    path: {tiny_llama_package}\n")
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "bench", "load", "--config", str(config),
         "--duration", "1", "--mix", "classify"], capture_output=True, text=True, timeout=90)
    assert result.returncode == 1
    assert "no ready model for it" in result.stderr
