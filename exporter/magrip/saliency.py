"""Neuron saliency: how much each FFN neuron contributes, and how much the loss cares.

For neuron i of a layer, with u_i = act(gate_i(h)) * up_i(h) (the down_proj input) over
the calibration tokens t of one batch, and L the causal-LM loss of that batch:

    contribution_i = ||u_i||_2                      = sqrt(sum_t u_it^2)
    taylor_i       = |sum_t u_it * dL/du_it|        (first-order loss change if u_i := 0)
    jacobian_i     = ||dL/du_i||_2                  = sqrt(sum_t (dL/du_it)^2)

Each signal is divided by its median over the layer's active neurons (so layers of
different scale rank on one axis), the two are combined with weights (MAGRIP: 1:1;
the ablations magnitude-only 1:0 and gradient-only 0:1), and the per-batch scores are
averaged over the calibration batches. `random` is the null ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from exporter.magrip.ffn import NeuronMasks, find_ffns
from exporter.magrip.options import SaliencyOptions


def median_normalise(values: np.ndarray, active: np.ndarray) -> np.ndarray:
    """values / median(values[active]); the median of a dead layer (0) leaves it as is."""
    median = float(np.median(values[active])) if active.any() else 0.0
    return values / median if median > 0 else values


def neuron_saliency(
    model: nn.Module,
    windows: np.ndarray,  # (N, S) int64 calibration token windows
    options: SaliencyOptions,
    keep: Sequence[torch.Tensor] | None = None,  # per layer (W,) bool: the active neurons
    seed: int = 0,
) -> list[np.ndarray]:
    """Per layer (W,) float64 scores, higher = more salient; inactive neurons get -inf."""
    options.validate()
    ffns = find_ffns(model)
    widths = [mlp.down_proj.in_features for mlp in ffns]
    active = [np.ones(w, bool) if keep is None else keep[i].cpu().numpy().astype(bool)
              for i, w in enumerate(widths)]
    if options.method == "random":
        rng = np.random.default_rng(seed)
        scores = [rng.random(w) for w in widths]
    else:
        w_mag, w_sens = options.weights
        scores = [np.zeros(w) for w in widths]
        batches = [windows[i : i + options.batch_size]
                   for i in range(0, len(windows), options.batch_size)]
        masks = NeuronMasks.from_keep(keep) if keep is not None else NeuronMasks([None] * len(ffns))
        for batch in batches:
            signals = _batch_signals(model, ffns, masks, torch.from_numpy(batch),
                                     options.sensitivity, need_grad=w_sens > 0)
            for layer, (contribution, sensitivity) in enumerate(signals):
                combined = w_mag * median_normalise(contribution, active[layer])
                if w_sens > 0:
                    combined = combined + w_sens * median_normalise(sensitivity, active[layer])
                scores[layer] += combined / len(batches)
    return [np.where(a, s, -np.inf) for s, a in zip(scores, active)]


def _batch_signals(
    model: nn.Module,
    ffns: Sequence[nn.Module],
    masks: NeuronMasks,
    batch: torch.Tensor,  # (B, S) int64
    sensitivity: str,
    need_grad: bool,
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """One forward (and backward) pass: per layer (contribution, sensitivity), each (W,)."""
    contribution: list[torch.Tensor | None] = [None] * len(ffns)
    sens: list[torch.Tensor | None] = [None] * len(ffns)

    def capture(layer: int):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]):
            u = inputs[0]  # (B, S, W), after the mask hook: masked neurons are 0
            contribution[layer] = u.detach().square().sum(dim=(0, 1)).sqrt()
            if need_grad:
                u_value = u.detach()

                def on_grad(grad: torch.Tensor) -> None:  # grad: (B, S, W) = dL/du
                    if sensitivity == "taylor":
                        sens[layer] = (u_value * grad).sum(dim=(0, 1)).abs()
                    else:
                        sens[layer] = grad.square().sum(dim=(0, 1)).sqrt()

                u.register_hook(on_grad)
            return None

        return hook

    def needs_grad(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        # Weights stay frozen (no weight gradients are stored); the embedding output
        # is the one leaf that carries requires_grad, so every u has a grad path.
        return output.requires_grad_()

    was_training = model.training
    model.eval()
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    handles = []
    try:
        with masks.applied(ffns):
            handles = [mlp.down_proj.register_forward_pre_hook(capture(i))
                       for i, mlp in enumerate(ffns)]
            if need_grad:
                handles.append(model.get_input_embeddings().register_forward_hook(needs_grad))
                loss = model(input_ids=batch, labels=batch).loss
                loss.backward()
            else:
                with torch.no_grad():
                    model(input_ids=batch)
    finally:
        for handle in handles:
            handle.remove()
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
        model.train(was_training)
    return [
        (c.double().numpy(), s.double().numpy() if s is not None else None)
        for c, s in zip(contribution, sens)
    ]
