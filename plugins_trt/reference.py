"""NumPy references of every kernel in plugins_trt/kernels: the specification they are
tested against (same arguments as the launchers in plugins_trt/kernels.py, as arrays).

Products and sums are taken in float64 and the result is cast to the activation dtype, so
a kernel's error against these is its own rounding and nothing else.
"""

from __future__ import annotations

import numpy as np

from runtime.activation_grid import quantize_per_token
from runtime.ternary_layout import CODES_PER_BYTE, ZERO_POINT, dequantize, unpack_codes

# ---- packed ternary matmul (packed_ternary_matmul.cu) -------------------------------------


def words_to_packed(words: np.ndarray, n: int, block_size: int) -> np.ndarray:
    """(N, K_pad/16) 32-bit words -> the layout's (N, n_blocks, block_size/4) uint8 bytes.

    A little-endian reinterpretation: the bytes are the same, only the element type differs.
    """
    raw = np.ascontiguousarray(words).view(np.uint8).reshape(n, -1)  # (N, K_pad/4)
    return raw.reshape(n, -1, block_size // CODES_PER_BYTE)


def packed_to_words(packed: np.ndarray) -> np.ndarray:
    """(N, n_blocks, block_size/4) uint8 -> (N, K_pad/16) int32 over the same bytes."""
    n = packed.shape[0]
    return np.ascontiguousarray(packed).reshape(n, -1).view("<i4")


def _as_layout(packed: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed (N, n_blocks, block_size/4) uint8, scales (N, n_blocks) float32) from the
    layout's arrays or the kernels' word view."""
    n = packed.shape[0]
    scales = np.asarray(scales, np.float32).reshape(n, -1)
    if packed.dtype != np.uint8:
        k_pad_words = packed.reshape(n, -1).shape[1]
        packed = words_to_packed(packed, n, k_pad_words * 16 // scales.shape[1])
    return packed, scales


def quantize_int8_per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, K) -> int8 (M, K) and float32 scales (M,): q = rint(x * 127 / absmax), clipped.

    The same float32 operations as quantize_int8 in the kernel, so the bytes match.
    """
    x32 = np.asarray(x, dtype=np.float32)
    amax = np.abs(x32).max(axis=1) if x32.shape[1] else np.zeros(x32.shape[0], np.float32)
    scale = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(x32 * inv[:, None]), -127, 127).astype(np.int8)
    return q, scale


def permute_int8_groups(q: np.ndarray, k_pad: int) -> np.ndarray:
    """(M, K) int8 -> (M, K_pad) in the kernel's dp4a order: within each group of 16,
    position 4i + b holds element 4b + i (so int32 lane i of a group = x[i, 4+i, 8+i, 12+i])."""
    m, k = q.shape
    padded = np.zeros((m, k_pad), dtype=np.int8)
    padded[:, :k] = q
    groups = padded.reshape(m, k_pad // 16, 4, 4)  # [.., b, i] = element 4b + i
    return np.ascontiguousarray(groups.transpose(0, 1, 3, 2)).reshape(m, k_pad)


def ternary_matmul(
    x: np.ndarray,
    packed: np.ndarray,
    scales: np.ndarray,
    k: int,
    activation_bits: int = 16,
) -> np.ndarray:
    """Y (M, N) = X (M, K) @ dequant(W).T, W in the layout of runtime/ternary_layout.py.

    packed: (N, n_blocks, block_size/4) uint8 (or its (N, K_pad/16) 32-bit word view).
    activation_bits=8 is the W2A8 path: X quantised per token to int8 first.
    """
    x = np.asarray(x)
    packed, scales = _as_layout(packed, scales)
    weight = dequantize(packed, scales, k).astype(np.float64)  # (N, K)
    if activation_bits == 16:
        y = x.astype(np.float64) @ weight.T
    elif activation_bits == 8:
        q, token_scale = quantize_int8_per_token(x)
        y = (q.astype(np.float64) @ weight.T) * token_scale.astype(np.float64)[:, None]
    else:
        raise ValueError(f"activation_bits must be 16 or 8, got {activation_bits}")
    return y.astype(x.dtype)


# ---- tensor-core W2A8 (ternary_mma.cu) ---------------------------------------------------
# The W2A16 tensor-core kernel computes ternary_matmul() above (it is one more W2A16 path).


def block_integer_sums(q: np.ndarray, packed: np.ndarray, k: int) -> np.ndarray:
    """(M, K) int8 activation codes and W in the layout, (N, n_blocks, block_size/4) uint8
    -> (M, N, n_blocks) int64: the exact sum over each scale block of q[m, k] * (code[n, k] - 2).

    Computed as float64 products, which are exact: every partial sum is an integer far
    below 2^53 (|q| <= 128, block_size <= K).
    """
    n, n_blocks, blob = packed.shape
    block_size = blob * CODES_PER_BYTE
    m = q.shape[0]
    codes = unpack_codes(packed, n_blocks * block_size).astype(np.float64) - ZERO_POINT
    padded = np.zeros((m, n_blocks * block_size))
    padded[:, :k] = q
    sums = np.empty((m, n, n_blocks), dtype=np.int64)
    for b in range(n_blocks):
        cols = slice(b * block_size, (b + 1) * block_size)
        sums[:, :, b] = padded[:, cols] @ codes[:, cols].T
    return sums


def ternary_matmul_int8(
    x: np.ndarray, packed: np.ndarray, scales: np.ndarray, k: int
) -> np.ndarray:
    """The W2A8 tensor-core kernel: X quantised per token on the package's grid
    (runtime/activation_grid.py: what the graph's QuantizeLinear computes), exact integer
    sums per scale block, then Y[m, n] = step[m] * sum_b scale[n, b] * sums[m, n, b].

    activation_bits=8 of ternary_matmul() is the GEMV's grid (x * 127 / absmax, no floor);
    the two agree except where x / step lands within float32 noise of a .5 boundary.
    """
    x = np.asarray(x)
    packed, scales = _as_layout(packed, scales)
    q, step = quantize_per_token(x)
    sums = block_integer_sums(q, packed, k).astype(np.float64)
    y = (sums * scales.astype(np.float64)[None]).sum(axis=2) * step.astype(np.float64)[:, None]
    return y.astype(x.dtype)


# ---- sparse gated FFN (sparse_ffn.cu) ------------------------------------------------------


def silu(g: np.ndarray) -> np.ndarray:
    return g / (1.0 + np.exp(-g))


def gelu_tanh(g: np.ndarray) -> np.ndarray:
    return 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g**3)))


ACTIVATION_FUNCTIONS = {"silu": silu, "gelu_tanh": gelu_tanh}


def active_neurons(f: int, indices: np.ndarray | None = None, width: int | None = None):
    """The neuron ids a kernel call reads: the index list, or the prefix of `width`."""
    if indices is not None:
        ids = np.asarray(indices, dtype=np.int64)
        return ids[(ids >= 0) & (ids < f)]  # the kernel skips out-of-range ids
    return np.arange(min(max(int(f if width is None else width), 0), f))


def sparse_ffn(
    x: np.ndarray,
    w_gate: np.ndarray,
    w_up: np.ndarray,
    w_down: np.ndarray,
    activation: str,
    indices: np.ndarray | None = None,
    width: int | None = None,
) -> np.ndarray:
    """Y (M, D) = act(X Wg[a].T) * (X Wu[a].T) @ Wd[a] over active neurons a.

    w_gate, w_up, w_down: (F, D) neuron-major rows; the full width is the dense FFN.
    """
    act = ACTIVATION_FUNCTIONS[activation]
    ids = active_neurons(w_gate.shape[0], indices, width)
    x64 = np.asarray(x, dtype=np.float64)
    gate = x64 @ w_gate[ids].astype(np.float64).T  # (M, A)
    up = x64 @ w_up[ids].astype(np.float64).T
    y = (act(gate) * up) @ w_down[ids].astype(np.float64)  # (M, D)
    return y.astype(np.asarray(x).dtype)
