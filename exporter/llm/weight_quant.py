"""Blockwise int4/int8 weight quantisation for LLM exports (MatMulNBits layout).

Round-to-nearest, symmetric per block of `block_size` weights along K:
    scale = max|w| over the block / qmax      (qmax = 7 for int4, 127 for int8)
    code  = clip(round(w / scale), -qmax - 1, qmax) + zero_point   (zero_point = 2^(bits-1))
The zero point is MatMulNBits' default, so no zero_points input is stored. Packing is
runtime.ternary_layout.pack_codes, the same layout the 2-bit ViT weights use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from runtime.ternary_layout import pack_codes, padded_k, unpack_codes

BLOCK_FORMATS = ("int8", "int4")  # the --weights choices stored as MatMulNBits blocks
# Every --weights choice: fp32 and fp16 are float initializers (fp16 widened by a Cast in
# the graph, computed in fp32); int8 and int4 are MatMulNBits blocks.
WEIGHT_FORMATS = ("fp32", "fp16", *BLOCK_FORMATS)
INT8_ACTIVATIONS = 4  # MatMulNBits accuracy level that quantises its input to int8 blocks
ROW_BLOCK_VALUES = 1 << 22  # weights quantised (or rounded) per step: 16 MB of float32


@dataclass(frozen=True)
class WeightQuantConfig:
    bits: int  # 4 or 8
    block_size: int = 32
    accuracy_level: int = 0  # MatMulNBits: 0 computes in fp32; 4 quantises activations to int8

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"weights: bits must be 4 or 8, got {self.bits}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block size must be a power of two >= 16, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy level must be 0..4, got {self.accuracy_level}")


def weight_quant_config(
    weights: str, block_size: int = 32, accuracy_level: int = 0
) -> WeightQuantConfig:
    """The MatMulNBits config for an int8 / int4 --weights choice."""
    if weights not in BLOCK_FORMATS:
        raise ValueError(f"block-quantised weights are one of {BLOCK_FORMATS}, got {weights!r}")
    return WeightQuantConfig(int(weights[3:]), block_size, accuracy_level)


def quantize_blockwise(
    weight: np.ndarray, config: WeightQuantConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float -> (packed (N, n_blocks, block_size*bits/8) uint8, scales (N, n_blocks)).

    Rows are independent, so they are done ROW_BLOCK_VALUES at a time: a 128k x 3072 tied
    LM head needs a few float32 copies of one block, not of the whole matrix.
    """
    n, k = weight.shape
    k_pad = padded_k(k, config.block_size)
    n_blocks = k_pad // config.block_size
    packed = np.empty((n, n_blocks, config.block_size * config.bits // 8), dtype=np.uint8)
    scales = np.empty((n, n_blocks), dtype=np.float32)
    step = max(1, ROW_BLOCK_VALUES // k_pad)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        packed[rows], scales[rows] = _quantize_rows(weight[rows], config)
    return packed, scales


def _quantize_rows(weight: np.ndarray, config: WeightQuantConfig
                   ) -> tuple[np.ndarray, np.ndarray]:
    n, k = weight.shape
    bs, qmax = config.block_size, (1 << (config.bits - 1)) - 1
    k_pad = padded_k(k, bs)
    padded = np.zeros((n, k_pad), dtype=np.float32)
    padded[:, :k] = weight
    blocks = padded.reshape(n, k_pad // bs, bs)  # (N, n_blocks, block_size)
    scales = np.abs(blocks).max(axis=2) / qmax  # (N, n_blocks)
    scales = np.where(scales == 0, 1.0, scales).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[:, :, None]), -qmax - 1, qmax)
    codes = (q + (1 << (config.bits - 1))).astype(np.uint8).reshape(n, k_pad)[:, :k]
    return pack_codes(codes, bs, config.bits), scales


def signed_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """(N, n_blocks, block_size*bits/8) packed -> (N, K_pad) int8 codes less the zero point:
    the integers MatMulNBits multiplies by each block's scale."""
    n, n_blocks, block_bytes = packed.shape
    codes = unpack_codes(packed, n_blocks * block_bytes * 8 // bits, bits).astype(np.int16)
    return (codes - (1 << (bits - 1))).astype(np.int8)


def dequantize_blockwise(
    packed: np.ndarray, scales: np.ndarray, k: int, bits: int
) -> np.ndarray:
    """The float32 (N, K) weight that MatMulNBits computes with."""
    block_size = packed.shape[2] * 8 // bits
    codes = signed_codes(packed, bits).astype(np.float32)
    return (codes * np.repeat(scales, block_size, axis=1))[:, :k]


class EffectiveWeights(Mapping[str, np.ndarray]):
    """The float32 weights a package computes with, where they differ from the checkpoint's.

    Keys are the exporter's weight names; values are computed from the checkpoint when
    read (a 3B model's dequantised weights are 12 GB in float32), whole or a block of
    rows at a time (`rows`; rows round independently): round-to-nearest blocks
    dequantised (int8/int4), or the weight rounded to float16 and widened (fp16). A
    weight the graph stores scaled (the attention scale folded into q_proj) is rounded
    as stored, then unscaled. Empty for fp32 packages.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], quant: WeightQuantConfig | None,
                 weight_dtype: type = np.float32):
        self.weights = weights  # a CheckpointWeights reads blocks of rows alone
        self.quant = quant
        self.weight_dtype = weight_dtype
        self._rounded: dict[str, tuple[str, float, bool]] = {}  # name -> source, scale, blocks

    def add(self, name: str, *, quantized: bool, source: str | None = None,
            scale: float = 1.0) -> None:
        """Note that the graph rounds weight `name` (read from `source`, times `scale`):
        as MatMulNBits blocks when `quantized`, else as its float16 storage if any."""
        if quantized or self.weight_dtype != np.float32:
            self._rounded[name] = (source or name, scale, quantized)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rounded)

    def __len__(self) -> int:
        return len(self._rounded)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.rows(name, 0, self.shape(name)[0])

    def shape(self, name: str) -> tuple[int, ...]:
        source = self._rounded[name][0]
        reader = getattr(self.weights, "shape", None)
        return tuple(reader(source)) if reader else self.weights[source].shape

    def quantized(self, name: str) -> bool:
        """Whether `name` is stored as MatMulNBits blocks (else rounded to float16)."""
        return self._rounded[name][2]

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the effective weight `name`, float32."""
        weight, scale = self._source_rows(name, start, stop)
        if self.quantized(name):
            packed, scales = quantize_blockwise(weight, self.quant)
            rounded = dequantize_blockwise(packed, scales, weight.shape[1], self.quant.bits)
        else:
            rounded = weight.astype(self.weight_dtype).astype(np.float32)
        if scale != 1.0:
            rounded /= scale
        return rounded

    def blocks(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Rows [start, stop) of quantised weight `name` as MatMulNBits holds them: signed
        codes (rows, K_pad) int8, scales (rows, n_blocks) float32, and the scale the
        graph folded in, which the rows are divided by (`rows` = codes * scales / it)."""
        weight, scale = self._source_rows(name, start, stop)
        packed, scales = quantize_blockwise(weight, self.quant)
        return signed_codes(packed, self.quant.bits), scales, scale

    def _source_rows(self, name: str, start: int, stop: int) -> tuple[np.ndarray, float]:
        """Rows [start, stop) of the checkpoint weight `name` is made from, as the graph
        stores it (times its folded scale), and that scale."""
        source, scale, _ = self._rounded[name]
        reader = getattr(self.weights, "rows", None)
        weight = reader(source, start, stop) if reader else self.weights[source][start:stop]
        return (weight * scale if scale != 1.0 else weight), scale

    def block_rows(self, name: str) -> int:
        """How many rows of `name` one block holds (ROW_BLOCK_VALUES values)."""
        shape = self.shape(name)
        return max(1, ROW_BLOCK_VALUES // int(np.prod(shape[1:])))
