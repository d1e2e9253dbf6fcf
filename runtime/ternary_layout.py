"""The packed 2-bit weight layout, defined once for exporter, runtime and kernels.

It is the layout of ONNX Runtime's contrib op `com.microsoft::MatMulNBits` with
bits=2, so one package runs on ORT CPU and on the TensorRT plugin over the same bytes:

    weight W (N, K) float, the op computes Y = X @ W.T  (X: (..., K), Y: (..., N))
    K is split into blocks of `block_size` (a power of two >= 16); K is zero-padded
    up to a whole number of blocks.
    codes   (N, K_pad) uint8 in 0..3, code = ternary value + ZERO_POINT
    packed  (N, n_blocks, block_size // 4) uint8: 4 codes per byte, low bits first
            along K, i.e. byte j holds codes 4j, 4j+1, 4j+2, 4j+3 in bits 0-1, 2-3,
            4-5, 6-7; read as little-endian 32-bit words that is 16 codes per word.
    scales  (N, n_blocks) float: dequant(code) = (code - ZERO_POINT) * scale
    ZERO_POINT = 2, MatMulNBits' default for bits=2 when no zero_points input is given.

Ternary values {-1, 0, +1} map to codes {1, 2, 3}; code 0 is never produced.
"""

from __future__ import annotations

import numpy as np

BITS = 2
CODES_PER_BYTE = 8 // BITS
ZERO_POINT = 2


def padded_k(k: int, block_size: int) -> int:
    """K rounded up to a whole number of blocks."""
    return -(-k // block_size) * block_size


def check_block_size(block_size: int) -> None:
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")


def ternary_to_codes(ternary: np.ndarray) -> np.ndarray:
    """(N, K) values in {-1, 0, 1} -> (N, K) uint8 codes in {1, 2, 3}."""
    values = np.asarray(ternary)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {values.shape}")
    if not np.isin(values, (-1, 0, 1)).all():
        raise ValueError("ternary weights must hold only -1, 0 and +1")
    return (values.astype(np.int16) + ZERO_POINT).astype(np.uint8)


def pack_codes(codes: np.ndarray, block_size: int, bits: int = BITS) -> np.ndarray:
    """(N, K) uint8 codes in 0..2^bits-1 -> (N, n_blocks, block_size * bits // 8) uint8.

    MatMulNBits packs 4- and 8-bit codes the same way (low bits first along K), so
    the int4/int8 LLM exports use this too; padding gets the default zero point.
    """
    check_block_size(block_size)
    per_byte = 8 // bits
    n, k = codes.shape
    k_pad = padded_k(k, block_size)
    padded = np.full((n, k_pad), 1 << (bits - 1), dtype=np.uint8)  # padding dequantises to 0
    padded[:, :k] = codes
    groups = padded.reshape(n, k_pad // per_byte, per_byte)  # (N, K_pad/4, 4) for 2 bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits  # 0, 2, 4, 6: low bits first
    packed = np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint8)  # (N, K_pad/4)
    return packed.reshape(n, k_pad // block_size, block_size // per_byte)


def unpack_codes(packed: np.ndarray, k: int, bits: int = BITS) -> np.ndarray:
    """(N, n_blocks, block_size * bits // 8) uint8 -> (N, K) uint8 codes, padding dropped."""
    per_byte = 8 // bits
    n = packed.shape[0]
    flat = packed.reshape(n, -1)  # (N, K_pad/4) for 2 bits
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    codes = (flat[:, :, None] >> shifts) & ((1 << bits) - 1)  # (N, K_pad/4, 4)
    return codes.reshape(n, -1)[:, :k].astype(np.uint8)


def pack_ternary(
    ternary: np.ndarray, scale: float | np.ndarray, block_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Ternary (N, K) and a per-tensor or per-row scale -> (packed, scales (N, n_blocks)).

    BitNet's absmean scale is per tensor; MatMulNBits wants one per block, so the
    same value is repeated (the bytes stay 2 bits per weight plus one float a block).
    """
    n, k = np.asarray(ternary).shape
    packed = pack_codes(ternary_to_codes(ternary), block_size)
    n_blocks = packed.shape[1]
    row_scale = np.broadcast_to(np.asarray(scale, dtype=np.float32).reshape(-1, 1), (n, 1))
    scales = np.ascontiguousarray(np.broadcast_to(row_scale, (n, n_blocks)), dtype=np.float32)
    return packed, scales


def dequantize(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """Reference dequantisation: (packed, scales) -> (N, K) float32 weight."""
    n, n_blocks, blob = packed.shape
    block_size = blob * CODES_PER_BYTE
    codes = unpack_codes(packed, n_blocks * block_size).astype(np.float32) - ZERO_POINT
    per_weight = np.repeat(scales.reshape(n, n_blocks), block_size, axis=1)  # (N, K_pad)
    return (codes * per_weight)[:, :k]
