"""A MatMulNBits weight in PyTorch, held as its codes: the export check's quantised linears.

An int8/int4 package computes x @ W.T with W = code * scale per block of `block_size`
weights along K (weight_quant.py). Holding W in float32 would cost the check 4 bytes per
weight, 12.8 GB for a 3B model and a second 1.6 GB for a quantised copy of its tied
embedding; this module keeps the signed codes (1 byte) and the scales, and dequantises a
block of output rows at a time in forward, with weight_quant.dequantize_blockwise's float
products and its division by a scale the graph folded into the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exporter.llm.weight_quant import ROW_BLOCK_VALUES, EffectiveWeights


class BlockQuantizedLinear(nn.Module):
    """y = x @ W.T (+ bias), W = codes * scales / divisors, dequantised in row blocks."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, divisors: torch.Tensor,
                 in_features: int, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = codes.shape[0]
        self.register_buffer("codes", codes)  # (N, K_pad) int8: code less the zero point
        self.register_buffer("scales", scales)  # (N, K_pad / block_size) float32
        self.register_buffer("divisors", divisors)  # (N,) float32: a folded scale, else 1
        self.folded = bool((divisors != 1).any())
        self.bias = bias  # (N,) or None

    @classmethod
    def from_effective(cls, effective: EffectiveWeights, parts: list[str],
                       bias: torch.Tensor | None = None) -> BlockQuantizedLinear:
        """The linear whose weight stacks the rows of the quantised weights `parts`
        (the exporter's names, in order), computed a block of rows at a time."""
        codes, scales, divisors = [], [], []
        for name in parts:
            rows, step = effective.shape(name)[0], effective.block_rows(name)
            for start in range(0, rows, step):
                block_codes, block_scales, scale = effective.blocks(
                    name, start, min(start + step, rows))
                codes.append(torch.from_numpy(block_codes))
                scales.append(torch.from_numpy(block_scales))
                divisors.append(torch.full((len(block_codes),), scale, dtype=torch.float32))
        return cls(torch.cat(codes), torch.cat(scales), torch.cat(divisors),
                   effective.shape(parts[0])[1], bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k_pad = self.codes.shape
        n_blocks = self.scales.shape[1]
        step = max(1, ROW_BLOCK_VALUES // k_pad)
        buffer = torch.empty(min(step, n), k_pad)  # one block of dequantised rows, reused
        outputs = []
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            weight = buffer[: rows.stop - start]
            weight.copy_(self.codes[rows])  # int8 -> float32, exact
            weight.view(-1, n_blocks, k_pad // n_blocks).mul_(self.scales[rows, :, None])
            if self.folded:
                weight.div_(self.divisors[rows, None])
            bias = None if self.bias is None else self.bias[rows]
            outputs.append(F.linear(x, weight[:, :self.in_features], bias))
        return torch.cat(outputs, dim=-1)
