"""numpy references for the int4 kernel (int4_matmul.c): the packed layout, and
onnxruntime's MatMulNBits at 4 bits, accuracy level 4, which the kernel computes.

MatMulNBits (no zero points given, so each weight code q in 0..15 means q - 8) with
int8 activations: each row of A is cut into blocks of 32 along K, each block scaled by
max|a| / 127 and rounded half to even; a block's product is the integer sum of codes
times (q - 8), scaled by both the activation's and the weight's block scale.
"""

from __future__ import annotations

import numpy as np

from runtime.kernels.library import BLOCK, COLUMNS, GROUP_BYTES


def weight_codes(weights: np.ndarray, n: int, k: int) -> np.ndarray:
    """MatMulNBits' B [N, K/32, 16] bytes -> the codes [N, K], 0..15 (element 2i in byte
    i's low nibble, 2i + 1 in its high nibble)."""
    b = np.asarray(weights, np.uint8).reshape(n, k // 2)
    codes = np.empty((n, k), np.uint8)
    codes[:, 0::2] = b & 15
    codes[:, 1::2] = b >> 4
    return codes


def quantize_activations(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a [M, K] float32 -> int8 codes [M, K/32, 32] and block scales [M, K/32]."""
    blocks = np.asarray(a, np.float32).reshape(a.shape[0], -1, BLOCK)
    scales = np.abs(blocks).max(axis=-1) / np.float32(127)
    inverse = np.divide(np.float32(1), scales, out=np.zeros_like(scales), where=scales != 0)
    codes = np.rint(blocks * inverse[..., None]).astype(np.int8)  # rint: half to even
    return codes, scales


def matmul_nbits(a: np.ndarray, weights: np.ndarray, scales: np.ndarray, n: int) -> np.ndarray:
    """What MatMulNBits (bits 4, block 32, accuracy level 4) computes: a [M, K] -> [M, N]."""
    m, k = a.shape
    codes, a_scales = quantize_activations(a)  # [M, nb, 32], [M, nb]
    w = weight_codes(weights, n, k).astype(np.int64).reshape(n, k // BLOCK, BLOCK) - 8
    dots = np.einsum("mbi,nbi->mnb", codes.astype(np.int64), w)  # exact integer sums
    w_scales = np.asarray(scales, np.float32).reshape(n, k // BLOCK)
    total = dots * a_scales[:, None, :].astype(np.float64) * w_scales[None].astype(np.float64)
    return total.sum(axis=-1).astype(np.float32)


def pack(weights: np.ndarray, scales: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's layout (int4_matmul.c's header): per group of 16 columns and block of
    32, 4 chunks of 64 bytes; byte j*4 + t of chunk c holds weight 4c + t of column j
    in its low nibble and weight 4(c + 4) + t in its high one. Padding columns: code 8,
    scale 0."""
    groups, blocks = -(-n // COLUMNS), k // BLOCK
    codes = np.full((groups * COLUMNS, k), 8, np.uint8)
    codes[:n] = weight_codes(weights, n, k)
    # [group, column j, block, chunk half h (low/high nibble), chunk c, t]
    c = codes.reshape(groups, COLUMNS, blocks, 2, 4, 4)
    nibbles = c[:, :, :, 0] | (c[:, :, :, 1] << 4)  # [group, j, block, chunk, t]
    packed = nibbles.transpose(0, 2, 3, 1, 4).reshape(groups, blocks, GROUP_BYTES)
    packed_scales = np.zeros((groups * COLUMNS, blocks), np.float32)
    packed_scales[:n] = np.asarray(scales, np.float32).reshape(n, blocks)
    return packed, np.ascontiguousarray(
        packed_scales.reshape(groups, COLUMNS, blocks).transpose(0, 2, 1))
