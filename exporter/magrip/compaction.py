"""Compaction: physically remove masked neurons, and put the kept ones in saliency order.

Neuron i owns gate_proj row i, up_proj row i and down_proj column i; selecting (and
permuting) those three together changes no output of the kept network. Putting the
kept neurons in descending saliency order makes "keep the first k neurons" of a layer
the saliency-best k: elastic width works on the weights as they are. (Phi-3's fused
gate_up_proj holds gate row i at i and up row i at width + i.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from exporter.magrip.ffn import find_ffns


def saliency_order(keep: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the kept neurons, most salient first (ties by index): (K,) int64."""
    kept = np.flatnonzero(keep)
    return kept[np.argsort(-scores[kept], kind="stable")]


def _take(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index)  # (out, in) with dim cut
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                    dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            new.bias.copy_(bias.index_select(0, index) if dim == 0 else bias)
    return new


def compact(model: nn.Module, order: Sequence[np.ndarray]) -> list[int]:
    """Keep, per layer, the neurons `order[l]` in that order; return the new widths."""
    ffns = find_ffns(model)
    if len(order) != len(ffns):
        raise ValueError(f"{len(order)} neuron orders for {len(ffns)} layers")
    widths = []
    for layer, (mlp, idx) in enumerate(zip(ffns, order)):
        width = mlp.down_proj.in_features
        index = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        if len(index) == 0 or len(set(index.tolist())) != len(index) or (
            int(index.min()) < 0 or int(index.max()) >= width
        ):
            raise ValueError(f"layer {layer}: the kept neurons must be distinct indices in "
                             f"[0, {width}) and at least one")
        if hasattr(mlp, "gate_up_proj"):
            both = torch.cat([index, index + width])
            mlp.gate_up_proj = _take(mlp.gate_up_proj, both, 0)  # (2K, hidden)
        else:
            mlp.gate_proj = _take(mlp.gate_proj, index, 0)  # (K, hidden)
            mlp.up_proj = _take(mlp.up_proj, index, 0)  # (K, hidden)
        mlp.down_proj = _take(mlp.down_proj, index, 1)  # (hidden, K)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(index)
        widths.append(len(index))
    model.config.intermediate_size = max(widths)
    return widths
