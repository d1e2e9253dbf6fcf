"""`e2edge bench serve-vit`: both batching sides in one daemon, images/s and latency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from vision_package import tiny_vision_package

pytestmark = pytest.mark.timeout(120)


def test_bench_serve_vit_reports_both_sides_at_each_client_count(tmp_path_factory, tmp_path):
    package = tiny_vision_package(tmp_path_factory)
    out = tmp_path / "serve-vit.json"
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "bench", "serve-vit", "--package", str(package),
         "--clients", "1,6", "--duration", "0.4", "--rounds", "2", "--warmup", "0.1",
         "--max-batch", "4", "--max-delay-ms", "3", "--input", "tensor", "--threads", "1",
         "--out", str(out)],
        capture_output=True, text=True, timeout=100,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["package_name"] == "tiny-vision" and report["input"] == "tensor"
    rows = {(r["batching"], r["clients"]): r for r in report["results"]}
    assert set(rows) == {("off", 1), ("on", 1), ("off", 6), ("on", 6)}
    for (batching, clients), row in rows.items():
        assert row["images_per_s"] == pytest.approx(row["requests"] / 0.4, rel=1e-3)
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        if batching == "off" or clients == 1:
            assert row["mean_batch"] == 1.0
        else:
            assert 1.0 <= row["mean_batch"] <= 4.0
    assert rows["on", 6]["mean_batch"] > 1.0  # six clients at once do share batches
    goal = report["goal"]
    assert goal["clients"] == 6
    assert goal["speedup"] == pytest.approx(
        rows["on", 6]["images_per_s"] / rows["off", 6]["images_per_s"], rel=1e-2)
    assert goal["meets_speedup"] == (goal["speedup"] >= 2.0)
    assert "batched/unbatched throughput" in result.stdout
