"""`e2edge bench serve` runs both sides on the same package and reports the overhead."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_bench_serve_compares_daemon_and_in_process(tiny_llama_package, tmp_path, mode):
    out = tmp_path / "serve.json"
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "bench", "serve", "--package",
         str(tiny_llama_package), "--new-tokens", "24", "--repeats", "2", "--warmup", "1",
         "--daemon", mode, "--out", str(out)],
        capture_output=True, text=True, timeout=100,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["daemon_mode"] == mode and report["new_tokens"] == 24
    for side in ("in_process", "daemon"):
        numbers = report[side]
        assert numbers["tokens_per_run"] == 24 and numbers["runs"] == 2
        assert 0 < numbers["ttft_ms"] < numbers["total_ms"]
        assert numbers["decode_tokens_per_s"] > 0
    expected = (report["daemon"]["total_ms"] - report["in_process"]["total_ms"]) / 24
    assert report["overhead_ms_per_token"] == pytest.approx(expected, abs=1e-4)
    assert report["within_max_overhead"] == (report["overhead_pct_of_decode"] < 5.0)
    assert "overhead" in result.stdout and "% of decode" in result.stdout
