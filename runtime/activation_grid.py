"""The per-token int8 activation grid of ternary layers, defined once for the exporter
(BitLinear's forward, the ONNX QuantizeLinear/DequantizeLinear pair in front of each
MatMulNBits), the runtime (int8 execution) and the kernels (the W2A8 tensor-core GEMM
quantises in its prologue with the same arithmetic, plugins_trt/kernels/ternary_mma.cu):

    step = max(max_k |x[m, k]|, EPS) / LEVELS      float32, one per token (row) m
    q    = saturate_int8(round_half_even(x / step))  the package stores q + ZERO_POINT_U8
    x_q  = q * step

Every operation is float32, the division a true (correctly rounded) division: what ONNX's
Div and QuantizeLinear compute, and what torch computes for BitLinear in float32.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5  # floor of the step: an all-zero token must not divide by zero
LEVELS = 127.0  # max |x| maps to +-127
ZERO_POINT_U8 = 128  # the package's uint8 activation codes are q + 128


def token_steps(x: np.ndarray) -> np.ndarray:
    """(M, K) -> (M,) float32 steps max(absmax, EPS) / LEVELS."""
    x32 = np.asarray(x, dtype=np.float32)
    amax = np.abs(x32).max(axis=-1) if x32.shape[-1] else np.zeros(x32.shape[:-1], np.float32)
    return (np.maximum(amax, np.float32(EPS)) / np.float32(LEVELS)).astype(np.float32)


def quantize_per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, K) -> (q (M, K) int8, step (M,) float32) on the grid above."""
    x32 = np.asarray(x, dtype=np.float32)
    step = token_steps(x32)
    q = np.rint(x32 / step[..., None])  # float32 division, ties to even
    return np.clip(q, -128, 127).astype(np.int8), step
