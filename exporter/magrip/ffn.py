"""The gated FFNs of a transformers decoder, and neuron masks applied to them.

A mask multiplies u = act(gate(h)) * up(h) on its way into `down_proj`, so masking
neuron i has exactly the effect of deleting gate row i, up row i and down column i.
Phi-3 keeps gate and up in one `gate_up_proj` (gate rows, then up rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from exporter.errors import CheckpointError

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
FUSED_PROJECTIONS = ("gate_up_proj", "down_proj")  # Phi-3


def projections(mlp: nn.Module) -> tuple[str, ...]:
    """The names of a gated MLP's linear projections (separate or fused gate and up)."""
    return FUSED_PROJECTIONS if hasattr(mlp, "gate_up_proj") else PROJECTIONS


def find_ffns(model: nn.Module) -> list[nn.Module]:
    """The gated MLP of every decoder layer; CheckpointError if a layer has none."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise CheckpointError(
            f"{type(model).__name__} has no decoder layers (model.model.layers): "
            "MAGRIP prunes LLaMA/Gemma-style decoders"
        )
    ffns = []
    for index, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is None or not all(isinstance(getattr(mlp, p, None), nn.Linear)
                                  for p in projections(mlp)):
            raise CheckpointError(
                f"layer {index} has no recognisable gated FFN (mlp.gate_proj, mlp.up_proj, "
                "mlp.down_proj, or mlp.gate_up_proj): MAGRIP prunes LLaMA/Gemma-style "
                "SwiGLU/GeGLU FFNs"
            )
        ffns.append(mlp)
    return ffns


def ffn_widths(ffns: Sequence[nn.Module]) -> list[int]:
    return [int(mlp.down_proj.in_features) for mlp in ffns]


class NeuronMasks:
    """Per-layer masks on the down_proj input; `values[l]` is (width_l,) or None (no mask).

    The hooks read `values` at every forward, so a caller may swap in new tensors
    (e.g. a straight-through mask recomputed each training step) while attached.
    """

    def __init__(self, values: Sequence[torch.Tensor | None]):
        self.values: list[torch.Tensor | None] = list(values)

    @classmethod
    def from_keep(cls, keep: Sequence[torch.Tensor]) -> NeuronMasks:
        """keep[l]: (width_l,) bool, True = neuron kept."""
        return cls([k.to(torch.float32) for k in keep])

    @contextmanager
    def applied(self, ffns: Sequence[nn.Module]) -> Iterator[None]:
        handles = [
            mlp.down_proj.register_forward_pre_hook(self._hook(layer))
            for layer, mlp in enumerate(ffns)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
            mask = self.values[layer]
            if mask is None:
                return None
            return (inputs[0] * mask.to(inputs[0].dtype),)  # (B, S, W) * (W,)

        return hook
