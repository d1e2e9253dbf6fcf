"""The e2edge CUDA kernels on the GPU that is here: correctness and speed, as JSON.

    e2edge bench kernels --out FILE.json [--skip-bench] [--vit] [--only PART,...]

In one go: compiles the kernels with NVRTC, checks every kernel path against the NumPy
references of plugins_trt/reference.py (the cases of e2edge/bench/kernel_cases.py; the
tensor-core ones on sm_80+ only), and benchmarks
  - the ternary GEMV (W2A16 and W2A8) against cuBLAS fp16 (torch) at decode shapes,
  - the tensor-core kernels (W2A16, W2A8), the sm_70 tiled kernel and every tile against
    cuBLAS fp16 at BitMed ViT's shapes (1 and 16 images) and at LLM prefill shapes
    (e2edge/bench/kernels_gemm.py),
  - the sparse FFN at 50 % width against the dense fp16 FFN (torch) and against itself at
    100 %, at decode (M = 1),
  - with --vit, the whole BitMed ViT forward with the kernels against fp16 torch: class
    scores and time per image (e2edge/bench/vit_kernels.py; needs the exporter's model).
Needs torch with CUDA and cuda-python (NVRTC + driver); not tensorrt (--vit: onnx and
onnxruntime too, for the exporter's verification tolerance). Each step is
recorded on its own: a failure lands in the JSON's "errors" and the next step runs. The
JSON is rewritten after every step, so a run cut short still leaves its results. Exit
status 1 when a step failed or a kernel disagrees with its reference.

Timing: weights are rotated through enough copies to exceed the L2 cache (every call reads
them from DRAM, as a decode step does), and a GPU sleep is queued before each timed loop
so Python's launch overhead is hidden: the numbers are GPU time per call.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2edge.bench import kernels_gemm
from e2edge.bench.gpu_timing import copies, gpu_time_us, l2_bytes
from e2edge.bench.kernel_cases import correctness_cases
from e2edge.bench.kernels_gemm import BLOCK_SIZE

DECODE_SHAPES = [(2048, 2048), (2048, 8192), (4096, 4096), (8192, 2048), (8192, 8192)]  # (K, N)
FFN_SHAPES = [(2048, 8192), (4096, 11008)]  # (D, F)
SMALL_BLOCK_SIZE = 64  # the decode shapes again with twice the scales, for comparison
# A 2-bit weight is 1/8 of an fp16 one: a decode GEMV that reads its weights from DRAM
# should run at least this much faster than cuBLAS fp16 for the plugin to earn its place.
DECODE_MIN_SPEEDUP = 2.0
# Half the FFN neurons is half the weight bytes: at 50 % width the sparse FFN should come
# close to twice the dense fp16 FFN's speed.
SPARSE_FFN_MIN_SPEEDUP = 1.8


def _ternary_bytes(k: int, n: int, block_size: int) -> int:
    from plugins_trt import kernels

    k_pad = kernels.TernaryGeometry(k, n, block_size).k_pad
    return n * k_pad // 4 + 4 * n * (k_pad // block_size)


def _time_ternary_decode(k: int, n: int, block_size: int, bits_list=(16, 8)) -> dict[int, float]:
    """GPU us per one-token ternary matmul, weights rotated past L2, per activation bits."""
    import torch

    from e2edge.bench import kernels_torch
    from plugins_trt import kernels

    geometry = kernels.TernaryGeometry(k, n, block_size)
    c_t = copies(_ternary_bytes(k, n, block_size))
    words, scales = kernels_torch.random_ternary_weights(k, n, c_t, block_size)
    x = torch.randn(1, k, dtype=torch.float16, device="cuda")
    out = torch.empty(1, n, dtype=torch.float16, device="cuda")
    scratch = kernels_torch.workspace(kernels.ternary_workspace_bytes(1, geometry, 8))

    def ternary(i: int, bits: int) -> None:
        kernels_torch.ternary_matmul(
            x,
            words[i % c_t],
            scales[i % c_t],
            k,
            block_size,
            activation_bits=bits,
            out=out,
            scratch=scratch,
        )

    times = {bits: gpu_time_us(lambda i, b=bits: ternary(i, b))["us"] for bits in bits_list}
    words.clear()
    scales.clear()
    return times


def _decode_row(k: int, n: int) -> dict[str, Any]:
    import torch

    ternary = _time_ternary_decode(k, n, BLOCK_SIZE)
    small_blocks = _time_ternary_decode(k, n, SMALL_BLOCK_SIZE, bits_list=(16,))
    x = torch.randn(1, k, dtype=torch.float16, device="cuda")
    out = torch.empty(1, n, dtype=torch.float16, device="cuda")
    c_f = copies(2 * n * k)
    dense = [torch.randn(n, k, dtype=torch.float16, device="cuda") for _ in range(c_f)]
    t_fp16 = gpu_time_us(lambda i: torch.mm(x, dense[i % c_f].t(), out=out))
    dense.clear()
    torch.cuda.empty_cache()
    ternary_bytes = _ternary_bytes(k, n, BLOCK_SIZE)
    return {
        "M": 1,
        "K": k,
        "N": n,
        "block_size": BLOCK_SIZE,
        "ternary_w2a16_us": ternary[16],
        "ternary_w2a8_us": ternary[8],
        "cublas_fp16_us": t_fp16["us"],
        "speedup_w2a16": t_fp16["us"] / ternary[16],
        "speedup_w2a8": t_fp16["us"] / ternary[8],
        f"ternary_w2a16_bs{SMALL_BLOCK_SIZE}_us": small_blocks[16],
        f"speedup_w2a16_bs{SMALL_BLOCK_SIZE}": t_fp16["us"] / small_blocks[16],
        "ternary_GBps": ternary_bytes / ternary[16] / 1e3,
        "fp16_GBps": 2 * n * k / t_fp16["us"] / 1e3,
        "copies": {"ternary": copies(ternary_bytes), "fp16": c_f},
        "launch_overhead_hidden": t_fp16["launch_overhead_hidden"],
    }


def bench_decode(report: dict[str, Any]) -> None:
    import torch

    # the smallest kernel there is, timed the same way: the floor under every number below
    tiny = torch.zeros(1, device="cuda")
    report["benchmarks"]["one_element_kernel_us"] = gpu_time_us(lambda i: tiny.add_(1))["us"]
    rows = report["benchmarks"].setdefault("decode_gemv", [])
    for k, n in DECODE_SHAPES:
        rows.append(_decode_row(k, n))
        _write(report)


def _sparse_ffn_row(d: int, f: int) -> dict[str, Any]:
    import torch

    from e2edge.bench import kernels_torch
    from plugins_trt import kernels

    c = copies(3 * 2 * f * d, limit_bytes=4 << 30)
    sets = [
        [torch.randn(f, d, dtype=torch.float16, device="cuda") * d**-0.5 for _ in range(3)]
        for _ in range(c)
    ]
    x = torch.randn(1, d, dtype=torch.float16, device="cuda")
    out = torch.empty(1, d, dtype=torch.float16, device="cuda")
    scratch = kernels_torch.workspace(kernels.sparse_ffn_workspace_bytes(1, d, f, "float16"))
    width_half = torch.tensor([f // 2], dtype=torch.int32, device="cuda")
    linear, silu = torch.nn.functional.linear, torch.nn.functional.silu

    def sparse(i: int, width: int | None = None, device_width=None) -> None:
        wg, wu, wd = sets[i % c]
        kernels_torch.sparse_ffn(
            x,
            wg,
            wu,
            wd,
            "silu",
            width=width,
            device_width=device_width,
            out=out,
            scratch=scratch,
        )

    def dense(i: int) -> None:
        wg, wu, wd = sets[i % c]
        torch.mm(silu(linear(x, wg)) * linear(x, wu), wd, out=out)

    t50 = gpu_time_us(lambda i: sparse(i, width=f // 2))
    t50_device = gpu_time_us(lambda i: sparse(i, device_width=width_half))
    t100 = gpu_time_us(lambda i: sparse(i, width=f))
    t_dense = gpu_time_us(dense)
    sets.clear()
    torch.cuda.empty_cache()
    return {
        "M": 1,
        "D": d,
        "F": f,
        "dtype": "float16",
        "activation": "silu",
        "sparse_50_us": t50["us"],
        "sparse_50_device_width_us": t50_device["us"],
        "sparse_100_us": t100["us"],
        "dense_torch_fp16_us": t_dense["us"],
        "speedup_50_vs_dense_torch": t_dense["us"] / t50["us"],
        "speedup_50_vs_own_100": t100["us"] / t50["us"],
        "copies": c,
    }


def bench_sparse_ffn(report: dict[str, Any]) -> None:
    rows = report["benchmarks"].setdefault("sparse_ffn", [])
    for d, f in FFN_SHAPES:
        rows.append(_sparse_ffn_row(d, f))
        _write(report)


# ---- the run -------------------------------------------------------------------------------
def environment(report: dict[str, Any]) -> None:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    import torch

    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    env["cuda_available"] = torch.cuda.is_available()
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU")
    torch.zeros(1, device="cuda")  # create the primary context the kernels share
    from plugins_trt import cuda_driver, nvrtc_compiler

    gpu = cuda_driver.gpu_info()
    driver, _ = cuda_driver.bindings()
    env["gpu"] = gpu.name
    env["compute_capability"] = f"{gpu.cc_major}.{gpu.cc_minor}"
    env["memory_GiB"] = round(gpu.total_memory / 2**30, 1)
    env["driver_version"] = cuda_driver.check(driver.cuDriverGetVersion(), "cuDriverGetVersion")
    env["nvrtc_version"] = ".".join(map(str, nvrtc_compiler.nvrtc_version()))
    env["nvrtc_target"] = nvrtc_compiler.choose_target(gpu.cc, nvrtc_compiler.supported_archs())
    env["L2_MiB"] = round(l2_bytes() / 2**20, 1)
    try:
        import cuda.bindings

        env["cuda_bindings"] = getattr(cuda.bindings, "__version__", "?")
    except ImportError:
        env["cuda_bindings"] = "cuda-python (old layout)"
    report["environment"] = env


def compile_kernels(report: dict[str, Any]) -> None:
    from plugins_trt import kernels, nvrtc_compiler

    t0 = time.perf_counter()
    kernels.LIBRARY.preload()
    report["compile"] = {
        "seconds": round(time.perf_counter() - t0, 2),
        "cache_dir": str(kernels.LIBRARY.cache_dir or nvrtc_compiler.default_cache_dir()),
    }


def correctness(report: dict[str, Any]) -> None:
    from plugins_trt import kernels, mma_tiles

    results = report.setdefault("correctness", [])
    tensor_cores = kernels.LIBRARY.device().cc >= mma_tiles.TENSOR_CORE_MIN_CC
    report["tensor_core_cases"] = "run" if tensor_cores else "skipped: the GPU is older than sm_80"
    only = report.get("only_cases")
    for name, case in correctness_cases(tensor_cores):
        if only and not any(part in name for part in only):
            continue
        try:
            results.append(case())
        except Exception as e:  # one broken case must not hide the others
            results.append({"name": name, "passed": False, "error": f"{type(e).__name__}: {e}"})
        _write(report)


def summarise(report: dict[str, Any]) -> None:
    checks = report.get("correctness", [])
    decode = report["benchmarks"].get("decode_gemv", [])
    ffn = report["benchmarks"].get("sparse_ffn", [])
    summary: dict[str, Any] = {
        "correctness_passed": sum(bool(c.get("passed")) for c in checks),
        "correctness_total": len(checks),
        "errors": len(report["errors"]),
    }
    if decode:
        ratios = [r["speedup_w2a16"] for r in decode]
        summary["decode_speedup_min"] = min(ratios)
        summary["decode_speedup_geomean"] = math.exp(statistics.mean(map(math.log, ratios)))
        summary["decode_w2a8_speedup_min"] = min(r["speedup_w2a8"] for r in decode)
        key = f"speedup_w2a16_bs{SMALL_BLOCK_SIZE}"
        summary[f"decode_bs{SMALL_BLOCK_SIZE}_speedup_min"] = min(r[key] for r in decode)
        summary["decode_min_speedup"] = DECODE_MIN_SPEEDUP
        summary["decode_meets_min_speedup"] = min(ratios) >= DECODE_MIN_SPEEDUP
    if ffn:
        ratios = [r["speedup_50_vs_dense_torch"] for r in ffn]
        summary["sparse_ffn_50_vs_dense_min"] = min(ratios)
        summary["sparse_ffn_50_vs_own_100_min"] = min(r["speedup_50_vs_own_100"] for r in ffn)
        summary["sparse_ffn_min_speedup"] = SPARSE_FFN_MIN_SPEEDUP
        summary["sparse_ffn_meets_min_speedup"] = min(ratios) >= SPARSE_FFN_MIN_SPEEDUP
    kernels_gemm.summarise(report["benchmarks"], summary)
    if report.get("vit", {}).get("rows"):
        from e2edge.bench import vit_kernels

        vit_kernels.summarise(report, summary)
    report["summary"] = summary


_OUT: Path | None = None


def _write(report: dict[str, Any]) -> None:
    if _OUT is None:
        return
    _OUT.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{_OUT.name}.", dir=_OUT.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, _OUT)


def _bench_vit(report: dict[str, Any]) -> None:
    from e2edge.bench import vit_kernels  # torch and the exporter's model

    vit_kernels.bench_vit(report, _write)


def run_checks(
    out: Path | None, skip_bench: bool = False, vit: bool = False, only: list[str] | None = None
) -> dict[str, Any]:
    """only: run just the correctness cases whose names contain one of these parts."""
    global _OUT
    _OUT = out
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "benchmarks": {},
        "errors": [],
    }
    if only:
        report["only_cases"] = only
    steps: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("environment", environment),
        ("compile", compile_kernels),
        ("correctness", correctness),
    ]
    if not skip_bench:
        steps += [
            ("decode", bench_decode),
            ("bitmedvit", lambda r: kernels_gemm.bench_bitmedvit(r, _write)),
            ("prefill", lambda r: kernels_gemm.bench_prefill(r, _write)),
            ("sparse_ffn", bench_sparse_ffn),
        ]
    if vit:
        steps.append(("vit", _bench_vit))
    for name, step in steps:
        t0 = time.perf_counter()
        try:
            step(report)
        except Exception as e:  # record and go on: one failure must not lose the rest
            report["errors"].append(
                {
                    "step": name,
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            )
            if name == "environment":
                break  # no GPU: nothing else can run
        report.setdefault("step_seconds", {})[name] = round(time.perf_counter() - t0, 2)
        summarise(report)
        _write(report)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    summarise(report)
    _write(report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--skip-bench", action="store_true", help="correctness checks only")
    parser.add_argument(
        "--only",
        type=lambda text: [part for part in text.split(",") if part],
        help="comma-separated name parts: run only the correctness cases matching one "
        "(e.g. under compute-sanitizer)",
    )
    parser.add_argument(
        "--vit",
        action="store_true",
        help="also the whole BitMed ViT forward with the kernels vs fp16 torch (class scores, "
        "time per image at batch 1 and 16)",
    )


def run(args: argparse.Namespace) -> int:
    report = run_checks(args.out, skip_bench=args.skip_bench, vit=args.vit, only=args.only)
    summary = report.get("summary", {})
    print(json.dumps(summary, indent=2))
    for error in report["errors"]:
        print(f"error in {error['step']}: {error['error']}", file=sys.stderr)
    for case in report.get("correctness", []):
        if not case.get("passed"):
            print(f"FAILED {case['name']}: {case.get('error') or case}", file=sys.stderr)
    for row in report.get("vit", {}).get("rows", []):
        if not row["passed"]:
            where = f"ternary {row['ternary']}, batch {row['batch']}"
            print(f"FAILED vit ({where}): class scores off the fp16 network", file=sys.stderr)
    failed = summary.get("correctness_passed", 0) != summary.get("correctness_total", -1)
    failed = failed or summary.get("vit_passed", 0) != summary.get("vit_total", 0)
    return 1 if report["errors"] or failed else 0
