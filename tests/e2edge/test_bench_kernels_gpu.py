"""The CUDA kernels on a real GPU against the NumPy references.

Skipped without torch-with-CUDA and cuda-python; the same cases run in
`e2edge bench kernels` (which also benchmarks)."""

from __future__ import annotations

import importlib.util

import pytest

from e2edge.bench.kernel_cases import (
    FFN_CASES,
    TERNARY_CASES,
    needs_tensor_cores,
    run_ffn_case,
    run_ternary_case,
)


def _missing_gpu() -> str | None:
    if (
        importlib.util.find_spec("cuda") is None
        or importlib.util.find_spec("cuda.bindings") is None
    ):
        return "cuda-python (cuda.bindings) is not installed"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_missing_gpu() is not None, reason=str(_missing_gpu())),
]


@pytest.mark.parametrize(("name", "params"), TERNARY_CASES, ids=[c[0] for c in TERNARY_CASES])
def test_ternary_kernel_matches_reference(name, params):
    from plugins_trt import kernels, mma_tiles

    if needs_tensor_cores(params) and kernels.LIBRARY.device().cc < mma_tiles.TENSOR_CORE_MIN_CC:
        pytest.skip("the tensor-core kernels need sm_80+")
    result = run_ternary_case(name, params)
    assert result["passed"], result


@pytest.mark.parametrize(("name", "params"), FFN_CASES, ids=[c[0] for c in FFN_CASES])
def test_sparse_ffn_kernel_matches_reference(name, params):
    result = run_ffn_case(name, params)
    assert result["passed"], result


def test_device_width_changes_nothing_but_the_width():
    """One launch geometry, widths read on the GPU: what one engine does at any ffn_keep."""
    import numpy as np
    import torch

    from e2edge.bench import kernels_torch
    from plugins_trt import reference

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 256)).astype(np.float16)
    w = [(rng.standard_normal((512, 256)) / 16).astype(np.float16) for _ in range(3)]
    xt, wg, wu, wd = (torch.from_numpy(a).cuda() for a in (x, *w))
    for width in (0, 1, 100, 256, 512, 600):
        device_width = torch.tensor([width], dtype=torch.int32, device="cuda")
        got = (
            kernels_torch.sparse_ffn(xt, wg, wu, wd, "silu", device_width=device_width)
            .cpu()
            .numpy()
        )
        want = reference.sparse_ffn(x, *w, "silu", width=width)
        assert np.abs(got.astype(np.float64) - want).max() <= 4e-3 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("ternary", ["ffn", "all"])
def test_bitmed_vit_forward_with_the_kernels_matches_the_fp16_network(ternary):
    pytest.importorskip("onnxruntime")  # the exporter's verification tolerance
    from e2edge.bench import vit_kernels
    from plugins_trt import kernels, mma_tiles

    if kernels.LIBRARY.device().cc < mma_tiles.TENSOR_CORE_MIN_CC:
        pytest.skip("the tensor-core kernels need sm_80+")
    row = vit_kernels.run_student(ternary, batch=1)
    assert row["passed"], row
