"""MatMulNBits' int8 activations (accuracy level 4), emulated in PyTorch for the export check.

At accuracy level 4 onnxruntime quantises each row of a MatMulNBits input per block of
`block_size` values along K, symmetric int8:

    scale = max|a| over the block / 127,   q = round(a / scale)   (half to even)

and sums q * weight-code products as integers, scaling each block by both scales. That
equals a float matmul of the dequantised activations q * scale with the dequantised
weights, so a checkpoint whose quantised linears see fake-quantised inputs computes
what the package computes, up to float summation order (measured: 5e-6 on a 576 x 3072
layer, where the plain float reference is 0.08 away).
"""

from __future__ import annotations

from collections.abc import Iterable

ACT_LEVELS = 127  # symmetric int8


def fake_quantize_blocks(x, block_size: int):
    """x (..., K) -> the same values on each block's int8 grid (float, same shape)."""
    import torch
    import torch.nn.functional as F

    k = x.shape[-1]
    padded = F.pad(x, (0, (-k) % block_size))
    blocks = padded.reshape(*x.shape[:-1], -1, block_size)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / ACT_LEVELS
    codes = torch.round(blocks / torch.where(scale > 0, scale, torch.ones_like(scale)))
    return (codes * scale).reshape(*x.shape[:-1], -1)[..., :k]


def quantize_linear_inputs(model, weight_names: Iterable[str], block_size: int) -> int:
    """Make every linear (nn.Linear, BlockQuantizedLinear) whose `<module>.weight` is named
    see int8-block inputs.

    Returns how many linears were hooked; names of other modules are skipped."""
    from torch import nn

    from exporter.llm.quantized_linear import BlockQuantizedLinear

    wanted = {name.removesuffix(".weight") for name in weight_names if name.endswith(".weight")}
    hooked = 0
    for name, module in model.named_modules():
        if name in wanted and isinstance(module, (nn.Linear, BlockQuantizedLinear)):
            module.register_forward_pre_hook(
                lambda _module, args: (fake_quantize_blocks(args[0], block_size), *args[1:])
            )
            hooked += 1
    return hooked
