"""`e2edge bench kernels` where there is no GPU (this machine), and its summary rules.

The kernels themselves run on a GPU in test_bench_kernels_gpu.py; here the command must
still write its JSON, say why nothing ran, and exit non-zero."""

from __future__ import annotations

import json

import numpy as np
import pytest

from e2edge.bench import kernels
from e2edge.bench.kernel_cases import (
    FFN_CASES,
    MMA_CASES,
    TERNARY_CASES,
    case_inputs,
    correctness_cases,
    needs_tensor_cores,
)
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


def test_tensor_core_cases_cover_every_tile_and_need_sm_80():
    from plugins_trt import mma_tiles

    mma = dict(MMA_CASES)
    for t in mma_tiles.W2A16_TILES:
        assert mma[f"mma_f16_tile_{t}"]["tile"] == t
    for t in mma_tiles.W2A8_TILES:
        assert mma[f"mma_w2a8_tile_{t}"]["tile"] == t
    assert all(needs_tensor_cores(p) for p in mma.values())
    assert not any(needs_tensor_cores(p) for n, p in TERNARY_CASES if n not in mma)
    names = [n for n, _ in correctness_cases(tensor_cores=False)]
    assert not set(names) & set(mma) and len(names) == len(TERNARY_CASES) - len(mma) + len(
        FFN_CASES
    )


@pytest.mark.parametrize(
    ("name", "params"),
    [c for c in MMA_CASES if c[1].get("exact")],
    ids=[c[0] for c in MMA_CASES if c[1].get("exact")],
)
def test_exact_cases_have_results_the_output_type_holds_exactly(name, params):
    """A kernel case compared bit for bit is only fair when the exact result (integer sums
    times powers of two) survives the cast to the output type; W2A8's also needs the step
    to be 1, so the int8 codes are the integers themselves (or their even neighbours)."""
    from plugins_trt import reference
    from runtime.activation_grid import quantize_per_token

    x, packed, scales = case_inputs(params)
    assert np.array_equal(np.log2(scales), np.round(np.log2(scales)))  # powers of two
    x64 = x.astype(np.float64)
    if params.get("bits", 16) == 8:
        q, step = quantize_per_token(x)
        assert (step == 1).all()
        np.testing.assert_array_equal(q, np.clip(np.round(x64), -128, 127))  # half to even
        exact = reference.ternary_matmul_int8(x64, packed, scales, params["k"])
    else:
        exact = reference.ternary_matmul(x64, packed, scales, params["k"])
    assert np.array_equal(exact.astype(x.dtype).astype(np.float64), exact)
    assert np.abs(exact).max() > 0


def test_gemm_and_vit_summaries_name_their_thresholds():
    from e2edge.bench import kernels_gemm

    row = {"speedup_w2a16": 1.1, "speedup_w2a8": 1.4}
    report = {
        "benchmarks": {"bitmedvit_gemm": [row, {"speedup_w2a16": 0.9, "speedup_w2a8": 1.7}],
                       "prefill_gemm": [row]},
        "correctness": [],
        "errors": [],
        "vit": {"rows": [{"batch": 1, "passed": True, "speedup_kernels_w2a8_vs_fp16_dense": 0.8},
                         {"batch": 16, "passed": True,
                          "speedup_kernels_w2a8_vs_fp16_dense": 1.3}]},
    }
    kernels.summarise(report)
    summary = report["summary"]
    assert summary["bitmedvit_w2a16_speedup_min"] == 0.9
    assert summary["bitmedvit_w2a16_min_speedup"] == kernels_gemm.W2A16_MIN_SPEEDUP == 1.0
    assert summary["bitmedvit_w2a16_meets_min_speedup"] is False
    assert summary["bitmedvit_w2a8_min_speedup"] == kernels_gemm.W2A8_MIN_SPEEDUP == 1.5
    assert summary["bitmedvit_w2a8_meets_min_speedup"] is False
    assert summary["prefill_w2a16_speedup_min"] == 1.1
    assert (summary["vit_passed"], summary["vit_total"]) == (2, 2)
    assert summary["vit_w2a8_batch16_speedup_min"] == 1.3
    assert summary["vit_w2a8_batch16_meets_min_speedup"] is True
