"""Brute-force check of the saliency scorers: remove one neuron, measure the loss change.

    e2edge eval saliency --model DIR --calib TEXT [--out FILE.json]

For a random subset of neurons in a few layers, each neuron is masked alone and the
calibration loss is measured again; every scorer's ranking of those neurons is then
compared with |loss change| by Spearman rank correlation. This is how the default
sensitivity form (taylor) was chosen (docs/magrip.md).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from exporter.magrip.ffn import NeuronMasks, find_ffns
from exporter.magrip.options import SaliencyOptions
from exporter.magrip.saliency import neuron_saliency

SCORERS = {
    "taylor only (gradient)": SaliencyOptions(method="gradient"),
    "jacobian only (gradient)": SaliencyOptions(method="gradient", sensitivity="jacobian"),
    "magnitude only": SaliencyOptions(method="magnitude"),
    "magrip, taylor": SaliencyOptions(),
    "magrip, jacobian": SaliencyOptions(sensitivity="jacobian"),
}


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (no tie correction)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def removal_loss_changes(model: nn.Module, windows: np.ndarray, layer: int,
                         neurons: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """(len(neurons),) loss with neuron i of `layer` masked, minus the dense loss."""
    ffns = find_ffns(model)
    width = ffns[layer].down_proj.in_features

    def loss(mask: torch.Tensor) -> float:
        values = [None] * len(ffns)
        values[layer] = mask
        total = 0.0
        with torch.no_grad(), NeuronMasks(values).applied(ffns):
            for i in range(0, len(windows), batch_size):
                batch = torch.from_numpy(windows[i : i + batch_size])
                total += float(model(input_ids=batch, labels=batch).loss) * len(batch)
        return total / len(windows)

    dense = loss(torch.ones(width))
    changes = []
    for neuron in neurons:
        mask = torch.ones(width)
        mask[int(neuron)] = 0.0
        changes.append(loss(mask) - dense)
    return np.asarray(changes)


def compare(model: nn.Module, windows: np.ndarray, layers: list[int], neurons: int,
            seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    scores = {name: neuron_saliency(model, windows, options) for name, options in SCORERS.items()}
    result = {}
    for layer in layers:
        width = find_ffns(model)[layer].down_proj.in_features
        subset = rng.choice(width, min(neurons, width), replace=False)
        change = removal_loss_changes(model, windows, layer, subset)
        result[str(layer)] = {
            "neurons": len(subset),
            "loss_change": {"mean": float(change.mean()), "max": float(change.max()),
                            "min": float(change.min()),
                            "fraction_that_hurt": float((change > 0).mean())},
            "spearman_vs_abs_change": {
                name: round(rank_correlation(s[layer][subset], np.abs(change)), 3)
                for name, s in scores.items()},
        }
    return result



def check_checkpoint(model_dir: str, calib: str, layers: list[int] | None = None,
                     neurons: int = 96, windows: int = 8, seq_len: int = 256) -> dict:
    """`compare` on a checkpoint and calibration text; layers default to first, middle, last."""
    from exporter.llm.checkpoint import checkpoint_tokenizer, load_torch_model
    from exporter.text import read_text, text_stream, token_windows

    model = load_torch_model(model_dir)
    stream = text_stream(checkpoint_tokenizer(model_dir), read_text(calib))
    calibration = token_windows(stream, seq_len, windows)
    n = len(find_ffns(model))
    layers = layers if layers is not None else [0, n // 2, n - 1]
    return {"model": model_dir, "calib": calib, "windows": list(calibration.shape),
            "layers": compare(model, calibration, layers, neurons)}
