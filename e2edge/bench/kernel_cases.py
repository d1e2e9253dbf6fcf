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
    ("tiled_f16_small", dict(dtype="float16", m=37, k=320, n=200, bs=64, path="auto")),
    ("tiled_f16_vit", dict(dtype="float16", m=128, k=2048, n=512, bs=64, path="auto")),
    ("tiled_f16_odd_k", dict(dtype="float16", m=64, k=1000, n=64, bs=32, path="tiled")),
    ("tiled_f16_m1", dict(dtype="float16", m=1, k=512, n=96, bs=64, path="tiled")),
    ("tiled_f32_small", dict(dtype="float32", m=37, k=320, n=200, bs=64, path="auto")),
    ("tiled_f32_odd_k", dict(dtype="float32", m=70, k=1000, n=130, bs=16, path="auto")),
    ("w2a8_f16_decode", dict(dtype="float16", m=1, k=2048, n=512, bs=64, bits=8)),
    ("w2a8_f16_odd_k", dict(dtype="float16", m=11, k=1000, n=300, bs=32, bits=8)),
    ("w2a8_f32_small", dict(dtype="float32", m=2, k=512, n=64, bs=16, bits=8)),
]
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


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    scale = float(np.abs(want).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) / scale


def run_ternary_case(name: str, p: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    import torch

    from e2edge.bench import kernels_torch
    from plugins_trt import kernels, reference
    from runtime.ternary_layout import pack_ternary

    rng = np.random.default_rng(seed)
    dtype = np.float16 if p["dtype"] == "float16" else np.float32
    bits = p.get("bits", 16)
    ternary = rng.integers(-1, 2, size=(p["n"], p["k"]), dtype=np.int8)
    row_scale = (rng.random(p["n"]) + 0.5).astype(np.float32) / math.sqrt(p["k"])
    packed, scales = pack_ternary(ternary, row_scale, p["bs"])
    x = rng.standard_normal((p["m"], p["k"])).astype(dtype)
    words, scale_t = kernels_torch.upload_packed(packed, scales)
    xt = torch.from_numpy(x).cuda()
    geometry = kernels.TernaryGeometry(p["k"], p["n"], p["bs"])
    scratch = kernels_torch.workspace(kernels.ternary_workspace_bytes(p["m"], geometry, bits))
    y = kernels_torch.ternary_matmul(
        xt,
        words,
        scale_t,
        p["k"],
        p["bs"],
        activation_bits=bits,
        path=p.get("path", "auto"),
        scratch=scratch,
    )
    torch.cuda.synchronize()
    want = reference.ternary_matmul(x, packed, scales, p["k"], activation_bits=bits)
    err = _rel_error(y.cpu().numpy(), want)
    result = {"name": name, **p, "rel_error": err, "tolerance": TOLERANCE[p["dtype"]]}
    ok = err <= TOLERANCE[p["dtype"]]
    if bits == 8:  # the quantised activations must match the reference byte for byte
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


def correctness_cases() -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    cases = [(n, (lambda n=n, p=p: run_ternary_case(n, p))) for n, p in TERNARY_CASES]
    cases += [(n, (lambda n=n, p=p: run_ffn_case(n, p))) for n, p in FFN_CASES]
    return cases
