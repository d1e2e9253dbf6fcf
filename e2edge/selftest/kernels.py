"""The kernel correctness cases of `e2edge bench kernels` (e2edge/bench/kernel_cases.py),
where a GPU is present: every CUDA kernel path against its NumPy reference.

They drive the kernels through torch's CUDA tensors, so they need a GPU (BackendHost
says whether the CUDA driver sees one) and torch built with CUDA; without either the
result says which is missing.
"""

from __future__ import annotations

from typing import Any

from runtime.backends.selection import BackendHost


def kernel_checks(host: BackendHost) -> dict[str, Any]:
    """{"status": passed | failed | absent, "reason", "passed", "total", "cases"}."""
    if host.gpu_name is None:
        return {"status": "absent", "reason": f"no GPU: {host.gpu_missing}"}
    try:
        import torch
    except ModuleNotFoundError:
        return {"status": "absent",
                "reason": "torch is not installed (the cases drive the kernels through its "
                          "CUDA tensors)"}
    if not torch.cuda.is_available():
        return {"status": "absent",
                "reason": f"torch {torch.__version__} cannot use the GPU (a CPU build?)"}
    from e2edge.bench.kernels import correctness, environment

    report: dict[str, Any] = {}
    try:
        environment(report)  # the CUDA context torch and the kernels share; NVRTC's version
    except Exception as e:  # noqa: BLE001 - a GPU that will not start is this check's failure
        return {"status": "failed", "reason": f"the GPU did not start: {type(e).__name__}: {e}"}
    correctness(report)  # each case's exception is recorded in its own row
    cases = report["correctness"]
    failed = [case["name"] for case in cases if not case.get("passed")]
    result: dict[str, Any] = {
        "status": "failed" if failed else "passed",
        "environment": report["environment"],
        "passed": len(cases) - len(failed),
        "total": len(cases),
        "cases": cases,
    }
    if failed:
        result["reason"] = f"{len(failed)} of {len(cases)} cases disagree with the reference: " \
                           f"{', '.join(failed[:5])}"
    return result
