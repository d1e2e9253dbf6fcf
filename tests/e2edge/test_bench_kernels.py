"""`e2edge bench kernels` where there is no GPU (this machine), and its summary rules.

The kernels themselves run on a GPU in test_bench_kernels_gpu.py; here the command must
still write its JSON, say why nothing ran, and exit non-zero."""

from __future__ import annotations

import json

import pytest

from e2edge.bench import kernels
from e2edge.bench.kernel_cases import FFN_CASES, TERNARY_CASES, correctness_cases
from e2edge.cli import main as cli_main


def _gpu_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_gpu_visible(), reason="a GPU is visible: the kernels would really run")
def test_without_a_gpu_the_json_says_why_and_the_exit_is_non_zero(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    assert cli_main(["bench", "kernels", "--out", str(out), "--skip-bench"]) == 1
    report = json.loads(out.read_text())
    (error,) = report["errors"]
    assert error["step"] == "environment"
    assert report["summary"]["correctness_total"] == 0 and "finished" in report
    assert "error in environment" in capsys.readouterr().err


def test_every_case_is_offered_once():
    names = [name for name, _ in correctness_cases()]
    assert names == [n for n, _ in TERNARY_CASES] + [n for n, _ in FFN_CASES]
    assert len(set(names)) == len(names)


def _decode_row(speedup: float) -> dict:
    return {"speedup_w2a16": speedup, "speedup_w2a8": speedup / 2,
            f"speedup_w2a16_bs{kernels.SMALL_BLOCK_SIZE}": speedup * 0.95}


def test_summary_names_the_thresholds_it_checks():
    report = {
        "benchmarks": {
            "decode_gemv": [_decode_row(1.9), _decode_row(3.4)],
            "sparse_ffn": [{"speedup_50_vs_dense_torch": 1.83, "speedup_50_vs_own_100": 1.7}],
        },
        "correctness": [{"name": "a", "passed": True}, {"name": "b", "passed": False}],
        "errors": [],
    }
    kernels.summarise(report)
    summary = report["summary"]
    assert (summary["correctness_passed"], summary["correctness_total"]) == (1, 2)
    assert summary["decode_speedup_min"] == 1.9
    assert summary["decode_min_speedup"] == kernels.DECODE_MIN_SPEEDUP == 2.0
    assert summary["decode_meets_min_speedup"] is False
    assert summary["sparse_ffn_min_speedup"] == kernels.SPARSE_FFN_MIN_SPEEDUP == 1.8
    assert summary["sparse_ffn_meets_min_speedup"] is True
