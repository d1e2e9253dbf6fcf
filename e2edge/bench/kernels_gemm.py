"""The ternary kernels at GEMM shapes (M >= 16 tokens) against cuBLAS fp16, for
`e2edge bench kernels`: BitMed ViT's linears at one and sixteen images, and LLM prefill.

Each row times, on the same inputs and in one run: cuBLAS fp16 (torch.mm on a dense fp16
weight), the path the launcher picks for fp16 activations (the tensor-core W2A16 kernel on
sm_80+), the W2A8 tensor-core kernel (int8 activations quantised in its prologue, from the
same fp16 input), the sm_70 WMMA tiled kernel that ran these shapes before, and every
tensor-core tile forced in turn ("tiles": what plugins_trt/mma_tiles.py's table should pick).
Ratios are cuBLAS time / kernel time: above 1 the kernel is faster. Activations and the
2-bit weights stay in L2 between calls, as they do inside a model's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from e2edge.bench.gpu_timing import gpu_time_us

BLOCK_SIZE = 128  # what `e2edge export vit` writes for K >= 128 (onnx_graph.block_size_for)
# (M, K, N): fc1 and fc2 of BitMed ViT (224 px, patch 7: 1024 tokens an image), 1 and 16 images
BITMEDVIT_SHAPES = [(1024, 512, 2048), (1024, 2048, 512), (16384, 512, 2048), (16384, 2048, 512)]
PREFILL_SHAPES = [(m, k, n) for m in (128, 512, 2048) for k, n in ((2048, 2048), (2048, 8192),
                                                                    (8192, 2048))]
# cuBLAS time / kernel time the tensor-core kernels should reach at the BitMed ViT shapes:
# W2A16 at least fp16's speed; W2A8 on int8 tensor cores (twice fp16's rate) half as fast again.
W2A16_MIN_SPEEDUP = 1.0
W2A8_MIN_SPEEDUP = 1.5


def gemm_row(m: int, k: int, n: int, sweep_tiles: bool = True) -> dict[str, Any]:
    import torch

    from e2edge.bench import kernels_torch
    from plugins_trt import kernels, mma_tiles

    words, scales = kernels_torch.random_ternary_weights(k, n, 1, BLOCK_SIZE)
    w, s = words[0], scales[0]
    x = torch.randn(m, k, dtype=torch.float16, device="cuda")
    out = torch.empty(m, n, dtype=torch.float16, device="cuda")
    dense = torch.randn(n, k, dtype=torch.float16, device="cuda")

    def ternary(bits: int, path: str = "auto", tile: str | None = None) -> float:
        return gpu_time_us(
            lambda i: kernels_torch.ternary_matmul(
                x, w, s, k, BLOCK_SIZE, activation_bits=bits, path=path, tile=tile, out=out
            ),
            iters=50,
        )["us"]

    cublas = gpu_time_us(lambda i: torch.mm(x, dense.t(), out=out), iters=50)["us"]
    gpu = kernels.LIBRARY.device()
    row: dict[str, Any] = {"M": m, "K": k, "N": n, "block_size": BLOCK_SIZE,
                           "cublas_fp16_us": cublas}
    for key, bits in (("w2a16", 16), ("w2a8", 8)):
        row[f"{key}_path"] = kernels.choose_ternary_path(m, "float16", bits, BLOCK_SIZE, gpu.cc)
        row[f"{key}_us"] = ternary(bits)
        row[f"speedup_{key}"] = cublas / row[f"{key}_us"]
        row[f"{key}_TFLOPs"] = 2 * m * k * n / row[f"{key}_us"] / 1e6
    row["tiled_sm70_us"] = ternary(16, path="tiled")
    row["speedup_tiled_sm70"] = cublas / row["tiled_sm70_us"]
    row["cublas_TFLOPs"] = 2 * m * k * n / cublas / 1e6
    if gpu.cc >= mma_tiles.TENSOR_CORE_MIN_CC:
        sms = gpu.multiprocessors
        row["w2a16_tile"] = mma_tiles.choose_tile(mma_tiles.W2A16_TILES, m, n, sms).name
        row["w2a8_tile"] = mma_tiles.choose_tile(mma_tiles.W2A8_TILES, m, n, sms).name
        if sweep_tiles:
            row["tiles"] = {
                "w2a16": {t: ternary(16, "mma", t) for t in mma_tiles.W2A16_TILES},
                "w2a8": {t: ternary(8, "mma", t) for t in mma_tiles.W2A8_TILES},
            }
    return row


def bench_bitmedvit(report: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
    rows = report["benchmarks"].setdefault("bitmedvit_gemm", [])
    for m, k, n in BITMEDVIT_SHAPES:
        rows.append(gemm_row(m, k, n))
        write(report)


def bench_prefill(report: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
    rows = report["benchmarks"].setdefault("prefill_gemm", [])
    for m, k, n in PREFILL_SHAPES:
        rows.append(gemm_row(m, k, n))
        write(report)


def summarise(benchmarks: dict[str, Any], summary: dict[str, Any]) -> None:
    """Least speed-up over the BitMed ViT rows per kernel, against its threshold."""
    rows = benchmarks.get("bitmedvit_gemm", [])
    for key, threshold in (("w2a16", W2A16_MIN_SPEEDUP), ("w2a8", W2A8_MIN_SPEEDUP)):
        ratios = [r[f"speedup_{key}"] for r in rows if f"speedup_{key}" in r]
        if ratios:
            summary[f"bitmedvit_{key}_speedup_min"] = min(ratios)
            summary[f"bitmedvit_{key}_min_speedup"] = threshold
            summary[f"bitmedvit_{key}_meets_min_speedup"] = min(ratios) >= threshold
    prefill = benchmarks.get("prefill_gemm", [])
    if prefill:
        summary["prefill_w2a16_speedup_min"] = min(r["speedup_w2a16"] for r in prefill)
        summary["prefill_w2a8_speedup_min"] = min(r["speedup_w2a8"] for r in prefill)
