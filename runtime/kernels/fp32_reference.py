"""NumPy references for the fp32 kernel (fp32_matmul.c): its packed layout and its product.

The tests compare the C packing with `pack` bit for bit, and the kernel's products (the
AVX-512 path, the portable loop, the onnxruntime op) with `matmul`, computed in float64.
"""

from __future__ import annotations

import numpy as np

from runtime.kernels.library import COLUMNS


def pack(weights: np.ndarray) -> np.ndarray:
    """B [K, N] -> panels [ceil(N / 16), K, 16]: panel g, row k holds B[k, 16 g : 16 g + 16],
    zero past N."""
    k, n = weights.shape
    panels = -(-n // COLUMNS)
    padded = np.zeros((k, panels * COLUMNS), np.float32)
    padded[:, :n] = weights
    return np.ascontiguousarray(padded.reshape(k, panels, COLUMNS).transpose(1, 0, 2))


def matmul(a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A [M, K] B [K, N] in float64, the exact product the kernel rounds."""
    return a.astype(np.float64) @ weights.astype(np.float64)
