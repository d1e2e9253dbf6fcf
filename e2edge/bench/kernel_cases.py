"""Kernel-vs-reference cases for a GPU: each builds random inputs, runs one kernel path
through e2edge.bench.kernels_torch, and compares with plugins_trt/reference.py. Shared by
tests/e2edge/test_bench_kernels_gpu.py and `e2edge bench kernels`; torch is imported
inside the cases, so importing this module needs numpy only."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

# (name, kind, params); tolerances are on max |kernel - reference| / max |reference|.
TERNARY_CASES = [
    ("gemv_f16_decode", dict(dtype="float16", m=1, k=2048, n=512, bs=64, path="auto")),
    ("gemv_f16_odd_k", dict(dtype="float16", m=3, k=1000, n=300, bs=32, path="auto")),
    ("gemv_f16_m8", dict(dtype="float16", m=8, k=4096, n=256, bs=128, path="auto")),
    ("gemv_f16_chunks", dict(dtype="float16", m=13, k=512, n=100, bs=16, path="gemv")),
    ("gemv_f32_decode", dict(dtype="float32", m=1, k=2048, n=512, bs=64, path="auto")),
    ("gemv_f32_odd_k", dict(dtype="float32", m=5, k=1000, n=77, bs=32, path="auto")),
    ("tiled_f16_small", dict(dtype="float16", m=37, k=320, n=200, bs=64, path="tiled")),
    ("tiled_f16_vit", dict(dtype="float16", m=128, k=2048, n=512, bs=64, path="tiled")),
    ("tiled_f16_odd_k", dict(dtype="float16", m=64, k=1000, n=64, bs=32, path="tiled")),
    ("tiled_f16_m1", dict(dtype="float16", m=1, k=512, n=96, bs=64, path="tiled")),
    ("tiled_f32_small", dict(dtype="float32", m=37, k=320, n=200, bs=64, path="auto")),
    ("tiled_f32_odd_k", dict(dtype="float32", m=70, k=1000, n=130, bs=16, path="auto")),
    ("w2a8_f16_decode", dict(dtype="float16", m=1, k=2048, n=512, bs=64, bits=8)),
    ("w2a8_f16_odd_k", dict(dtype="float16", m=11, k=1000, n=300, bs=32, bits=8)),
    ("w2a8_f32_small", dict(dtype="float32", m=2, k=512, n=64, bs=16, bits=8)),
]
# The tensor-core kernels (sm_80+). x "int": integers (W2A16: in [-1, 1]; W2A8: in
# [-127, 127] with 127 in every row, so the step is exactly 1) and "half": W2A8 codes on .5
# boundaries (rounding to even); scales "unit", "pow2_block" (a power of two per block),
# "block" (random per block: the per-block scaling paths) or per row (default). With integer
# x and power-of-two scales every sum is exact, so "exact" cases must match bit for bit.
_FC1, _FC2 = dict(m=1024, k=512, n=2048, bs=128), dict(m=1024, k=2048, n=512, bs=128)
_TILE_SHAPE = dict(m=100, k=576, n=200, bs=64, x="int", scales="unit", exact=True)
MMA_CASES = [
    ("mma_f16_vit_fc1", dict(dtype="float16", **_FC1, expect="mma")),
    ("mma_f16_vit_fc2", dict(dtype="float16", **_FC2, expect="mma")),
    ("mma_f16_prefill", dict(dtype="float16", m=256, k=2048, n=8192, bs=128, expect="mma")),
    ("mma_f16_m16", dict(dtype="float16", m=16, k=4096, n=256, bs=128, expect="mma")),
    ("mma_f16_odd", dict(dtype="float16", m=37, k=1000, n=200, bs=64, expect="mma")),
    ("mma_f16_block_scales", dict(dtype="float16", m=48, k=512, n=96, bs=64, scales="block",
                                  expect="mma")),
    ("mma_f16_exact_unaligned", dict(dtype="float16", m=37, k=1003, n=77, bs=16, x="int",
                                     scales="unit", exact=True, path="mma")),
    ("mma_f16_exact_pow2_blocks", dict(dtype="float16", m=64, k=320, n=130, bs=32, x="int",
                                       scales="pow2_block", exact=True, path="mma")),
    *[(f"mma_f16_tile_{t}", dict(dtype="float16", **_TILE_SHAPE, path="mma", tile=t))
      for t in ("128x128", "128x64", "64x128", "64x64", "32x128")],
    ("mma_w2a8_f16_vit_fc1", dict(dtype="float16", **_FC1, bits=8, expect="mma_w2a8")),
    ("mma_w2a8_f16_vit_fc2", dict(dtype="float16", **_FC2, bits=8, expect="mma_w2a8")),
    ("mma_w2a8_f16_m16", dict(dtype="float16", m=16, k=2048, n=256, bs=128, bits=8,
                              expect="mma_w2a8")),
    ("mma_w2a8_f32_odd", dict(dtype="float32", m=37, k=1000, n=200, bs=64, bits=8,
                              expect="mma_w2a8")),
    ("mma_w2a8_f32_block_scales", dict(dtype="float32", m=48, k=512, n=96, bs=32, bits=8,
                                       scales="block", expect="mma_w2a8")),
    ("mma_w2a8_f32_exact_unaligned_x", dict(dtype="float32", m=37, k=1003, n=77, bs=32, bits=8,
                                            x="int", scales="unit", exact=True, path="mma")),
    ("mma_w2a8_f32_exact_unaligned_w", dict(dtype="float32", m=20, k=980, n=64, bs=32, bits=8,
                                            x="int", scales="pow2_block", exact=True,
                                            path="mma")),
    ("mma_w2a8_f32_exact_ties", dict(dtype="float32", m=33, k=256, n=40, bs=128, bits=8,
                                     x="half", scales="unit", exact=True, path="mma")),
    ("mma_w2a8_f32_exact_k_chunks", dict(dtype="float32", m=130, k=8192, n=96, bs=128, bits=8,
                                         x="int", scales="unit", exact=True, path="mma",
                                         tile="128x64")),
    *[(f"mma_w2a8_tile_{t}", dict(dtype="float32", **_TILE_SHAPE, bits=8, path="mma", tile=t))
      for t in ("128x128", "128x64", "64x128", "64x64", "32x128")],
]
TERNARY_CASES += MMA_CASES
FFN_CASES = [
    ("ffn_f16_decode_prefix", dict(dtype="float16", m=1, d=2048, f=4096, act="silu", width=2048)),
    (
        "ffn_f16_decode_indices",
        dict(dtype="float16", m=1, d=1024, f=4096, act="gelu_tanh", n_idx=1000),
    ),
    ("ffn_f32_prefix", dict(dtype="float32", m=5, d=256, f=1000, act="silu", width=333)),
    (
        "ffn_f16_odd_d_device_width",
        dict(dtype="float16", m=3, d=100, f=300, act="gelu_tanh", device_width=150),
    ),
    (
        "ffn_f32_device_width_zero",
        dict(dtype="float32", m=1, d=64, f=96, act="silu", device_width=0),
    ),
    ("ffn_f16_full_width_chunks", dict(dtype="float16", m=20, d=512, f=512, act="silu", width=512)),
    (
        "ffn_f16_prefill_separate_convert",
        dict(dtype="float16", m=40, d=2048, f=1024, act="silu", width=700),
    ),
    (
        "ffn_f32_prefill_indices",
        dict(dtype="float32", m=9, d=384, f=700, act="gelu_tanh", n_idx=650),
    ),
    ("ffn_f16_width_zero", dict(dtype="float16", m=2, d=64, f=128, act="silu", width=0)),
]
TOLERANCE = {"float16": 4e-3, "float32": 2e-5}
W2A8_MMA_TOLERANCE = {"float16": 4e-3, "float32": 1e-5}  # one flipped int8 code moves ~1e-3


def needs_tensor_cores(params: dict[str, Any]) -> bool:
    """The case runs a tensor-core kernel, which only sm_80+ GPUs have."""
    return params.get("path") == "mma" or str(params.get("expect", "")).startswith("mma")


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale


def _case_scales(rng, p: dict[str, Any], n_blocks: int) -> np.ndarray:
    """Per-(row, block) scales of a case: (N, n_blocks) float32 (see the case list)."""
    n, kind = p["n"], p.get("scales", "row")
    if kind == "unit":
        return np.ones((n, n_blocks), np.float32)
    if kind == "pow2_block":
        return np.exp2(rng.integers(-2, 3, size=(n, n_blocks))).astype(np.float32)
    row = (rng.random((n, 1)) + 0.5) / math.sqrt(p["k"])
    if kind == "block":
        return (row * (1 + rng.random((n, n_blocks)))).astype(np.float32)
    return np.repeat(row, n_blocks, axis=1).astype(np.float32)


def _case_activations(rng, p: dict[str, Any], dtype) -> np.ndarray:
    m, k, kind = p["m"], p["k"], p.get("x", "normal")
    if kind == "normal":
        return rng.standard_normal((m, k)).astype(dtype)
    if p.get("bits", 16) == 16:  # small integers: every product and sum exact in fp16 out
        return rng.integers(-1, 2, size=(m, k)).astype(dtype)
    x = rng.integers(-127, 128, size=(m, k)).astype(np.float64)
    if kind == "half":  # x / step = j + 0.5: QuantizeLinear rounds to the even neighbour
        x = np.clip(x, -126, 125) + 0.5
    x[np.arange(m), rng.integers(0, k, size=m)] = 127.0  # absmax 127: the step is 1
    return x.astype(dtype)


def case_inputs(p: dict[str, Any], seed: int = 0):
    """A ternary case's inputs: (x (M, K), packed (N, n_blocks, bs/4) uint8, scales)."""
    from runtime.ternary_layout import pack_codes, ternary_to_codes

    rng = np.random.default_rng(seed)
    dtype = np.float16 if p["dtype"] == "float16" else np.float32
    ternary = rng.integers(-1, 2, size=(p["n"], p["k"]), dtype=np.int8)
    packed = pack_codes(ternary_to_codes(ternary), p["bs"])
    scales = _case_scales(rng, p, packed.shape[1])
    return _case_activations(rng, p, dtype), packed, scales


def case_reference(p: dict[str, Any], path_taken: str, x, packed, scales) -> np.ndarray:
    from plugins_trt import reference

    if path_taken == "mma_w2a8":
        return reference.ternary_matmul_int8(x, packed, scales, p["k"])
    return reference.ternary_matmul(x, packed, scales, p["k"], activation_bits=p.get("bits", 16))


def run_ternary_case(name: str, p: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    import torch

    from e2edge.bench import kernels_torch
    from plugins_trt import kernels, reference

    bits = p.get("bits", 16)
    geometry = kernels.TernaryGeometry(p["k"], p["n"], p["bs"])
    x, packed, scales = case_inputs(p, seed)
    words, scale_t = kernels_torch.upload_packed(packed, scales)
    xt = torch.from_numpy(x).cuda()
    scratch = kernels_torch.workspace(kernels.ternary_workspace_bytes(p["m"], geometry, bits))
    path = p.get("path", "auto")
    cc = kernels.LIBRARY.device().cc
    taken = kernels.choose_ternary_path(p["m"], p["dtype"], bits, p["bs"], cc, path)
    y = kernels_torch.ternary_matmul(
        xt,
        words,
        scale_t,
        p["k"],
        p["bs"],
        activation_bits=bits,
        path=path,
        tile=p.get("tile"),
        scratch=scratch,
    )
    torch.cuda.synchronize()
    want = case_reference(p, taken, x, packed, scales)
    tolerance = (W2A8_MMA_TOLERANCE if taken == "mma_w2a8" else TOLERANCE)[p["dtype"]]
    if p.get("exact"):
        tolerance = 0.0
    err = _rel_error(y.cpu().numpy(), want)
    result = {"name": name, **p, "path_taken": taken, "rel_error": err, "tolerance": tolerance}
    ok = err <= tolerance and taken == p.get("expect", taken)
    if taken == "w2a8":  # the quantised activations must match the reference byte for byte
        q, token_scale = reference.quantize_int8_per_token(x)
        expected = reference.permute_int8_groups(q, geometry.k_pad)
        raw = scratch.cpu().numpy()
        got_q = raw[: p["m"] * geometry.k_pad].view(np.int8).reshape(p["m"], geometry.k_pad)
        offset = -(-p["m"] * geometry.k_pad // 256) * 256
        got_scale = raw[offset : offset + 4 * p["m"]].view(np.float32)
        result["int8_mismatches"] = int((got_q != expected).sum())
        result["token_scale_max_diff"] = float(np.abs(got_scale - token_scale).max())
        ok = ok and result["int8_mismatches"] == 0 and result["token_scale_max_diff"] == 0.0
    result["passed"] = bool(ok)
    return result


def run_ffn_case(name: str, p: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    import torch

    from e2edge.bench import kernels_torch
    from plugins_trt import reference

    rng = np.random.default_rng(seed)
    dtype = np.float16 if p["dtype"] == "float16" else np.float32
    m, d, f = p["m"], p["d"], p["f"]
    x = rng.standard_normal((m, d)).astype(dtype)
    w = [(rng.standard_normal((f, d)) / math.sqrt(d)).astype(dtype) for _ in range(3)]
    xt, wg, wu, wd = (torch.from_numpy(a).cuda() for a in (x, *w))
    indices = width = device_width = None
    if "n_idx" in p:
        ids = rng.permutation(f)[: p["n_idx"]].astype(np.int32)
        indices = torch.from_numpy(ids).cuda()
        want = reference.sparse_ffn(x, *w, p["act"], indices=ids)
    elif "device_width" in p:
        device_width = torch.tensor([p["device_width"]], dtype=torch.int32, device="cuda")
        want = reference.sparse_ffn(x, *w, p["act"], width=p["device_width"])
    else:
        width = p["width"]
        want = reference.sparse_ffn(x, *w, p["act"], width=width)
    y = kernels_torch.sparse_ffn(
        xt, wg, wu, wd, p["act"], indices=indices, width=width, device_width=device_width
    )
    torch.cuda.synchronize()
    got = y.cpu().numpy()
    if not np.abs(want).max():  # an empty width must give exact zeros
        err = float(np.abs(got).max())
    else:
        err = _rel_error(got, want)
    tol = TOLERANCE[p["dtype"]] * (5 if p["dtype"] == "float32" else 1)  # atomics reorder sums
    return {"name": name, **p, "rel_error": err, "tolerance": tol, "passed": bool(err <= tol)}


def correctness_cases(
    tensor_cores: bool = True,
) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """Every case; without `tensor_cores` (a GPU before sm_80) the tensor-core ones are left
    out (see needs_tensor_cores)."""
    cases = [
        (n, (lambda n=n, p=p: run_ternary_case(n, p)))
        for n, p in TERNARY_CASES
        if tensor_cores or not needs_tensor_cores(p)
    ]
    cases += [(n, (lambda n=n, p=p: run_ffn_case(n, p))) for n, p in FFN_CASES]
    return cases
