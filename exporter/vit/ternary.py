"""BitLinear: BitNet b1.58 ternary weights with int8 per-token activations.

    weights      s_w = mean(|W|) over the whole tensor (absmean)
                 T = clamp(round(W / s_w), -1, 1) in {-1, 0, +1};  W_q = T * s_w
    activations  step = max(|x|) / 127 over the last axis, one per token (absmax)
                 q = round(x / step) in [-127, 127];  x_q = q * step
    output       y = x_q @ W_q.T + b   (the bias stays full precision)

Training sees the quantised values in the forward pass and passes gradients
straight through the rounding (STE: x + (q(x) - x).detach()), so the latent
full-precision weights keep learning. Inference computes exactly the same
arithmetic; the ONNX export mirrors it op for op (see onnx_graph.py): round(x / step)
is exactly what ONNX QuantizeLinear computes (division, round half to even), and
q * step what DequantizeLinear computes.

No clamp to [-128, 127] is needed on the activation codes: |x| <= 127 * step, so
|x / step| <= 127 up to one rounding error, far from the 127.5 where round() would
leave the int8 range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runtime.activation_grid import EPS  # floor of both scales: no division by 0
from runtime.activation_grid import LEVELS as ACT_LEVELS


def absmean_ternary(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> (ternary (N, K) in {-1, 0, 1} as float, scale () float)."""
    scale = weight.abs().mean().clamp(min=EPS)
    ternary = torch.clamp(torch.round(weight / scale), -1.0, 1.0)
    return ternary, scale


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    ternary, scale = absmean_ternary(weight)
    return ternary * scale


def activation_step(x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (..., 1): the int8 step of each token, absmax / 127."""
    return x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS) / ACT_LEVELS


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """Per-token int8 fake quantisation: values on the grid absmax/127, same dtype."""
    step = activation_step(x)  # (..., 1)
    return torch.round(x / step) * step


def ste(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward: the quantised value; backward: identity (straight-through)."""
    return x + (quantized - x).detach()


class BitLinear(nn.Linear):
    """nn.Linear whose forward uses ternary weights and int8 per-token activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_q = ste(x, quantize_activations(x))
        w_q = ste(self.weight, quantize_weight(self.weight))
        return F.linear(x_q, w_q, self.bias)

    def ternary_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The exported form: (ternary (N, K), per-tensor scale ())."""
        with torch.no_grad():
            return absmean_ternary(self.weight)
