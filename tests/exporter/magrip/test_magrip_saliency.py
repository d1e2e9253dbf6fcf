"""MAGRIP saliency against brute force: remove each neuron, measure the loss change."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from exporter.llm.checkpoint import load_torch_model
from exporter.magrip.brute_force import compare, removal_loss_changes
from exporter.magrip.ffn import NeuronMasks, find_ffns
from exporter.magrip.options import SaliencyOptions
from exporter.magrip.saliency import median_normalise, neuron_saliency


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _brute_force_loss_change(model, windows: np.ndarray, layer: int) -> np.ndarray:
    """(W,) loss(without neuron i) - loss(dense), all neurons in one batched forward."""
    ffns = find_ffns(model)
    width = ffns[layer].down_proj.in_features
    n = len(windows)
    ids = torch.from_numpy(np.concatenate([windows] * (width + 1)))  # ((W+1)*N, S)
    mask = torch.ones(width + 1, width)
    mask[torch.arange(width), torch.arange(width)] = 0.0  # row i drops neuron i; last: none
    values = [None] * len(ffns)
    values[layer] = mask.repeat_interleave(n, dim=0)[:, None, :]  # ((W+1)*N, 1, W)
    with torch.no_grad(), NeuronMasks(values).applied(ffns):
        logits = model(input_ids=ids).logits[:, :-1]
    nll = -torch.log_softmax(logits.double(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    loss = nll.reshape(width + 1, -1).mean(dim=1).numpy()  # per removed neuron
    return loss[:width] - loss[width]


@pytest.fixture(scope="module")
def model_and_windows(tiny_llama_checkpoint):
    model = load_torch_model(tiny_llama_checkpoint)
    windows = np.random.default_rng(0).integers(0, 300, size=(4, 32))
    return model, windows


def test_saliency_agrees_with_removing_each_neuron(model_and_windows):
    model, windows = model_and_windows
    taylor = neuron_saliency(model, windows, SaliencyOptions(method="gradient", batch_size=4))
    magrip = neuron_saliency(model, windows, SaliencyOptions(batch_size=4))
    for layer in range(2):
        change = np.abs(_brute_force_loss_change(model, windows, layer))
        # the first-order Taylor term is the loss change of the removal, to first order
        assert _rank_correlation(taylor[layer], change) > 0.9
        assert _rank_correlation(magrip[layer], change) > 0.6
        # the extremes agree: the neurons that matter most / least by brute force are
        # ranked near the top / bottom by MAGRIP
        width = len(change)
        rank = np.argsort(np.argsort(-magrip[layer]))  # 0 = most salient
        assert rank[np.argsort(-change)[:3]].max() < 0.25 * width
        assert rank[np.argsort(change)[:3]].min() >= 0.5 * width


def test_brute_force_tool_measures_the_same_loss_changes(model_and_windows):
    model, windows = model_and_windows
    batched = _brute_force_loss_change(model, windows, 1)
    result = compare(model, windows, [1], neurons=12)["1"]
    assert result["spearman_vs_abs_change"]["taylor only (gradient)"] > 0.7
    neurons = np.array([3, 50, 95])
    np.testing.assert_allclose(removal_loss_changes(model, windows, 1, neurons),
                               batched[neurons], atol=1e-5)



def test_eval_saliency_runs_the_brute_force_check_on_a_checkpoint(tiny_llama_checkpoint,
                                                                   tmp_path, capsys):
    from e2edge.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("To be, or not to be, that is the question. " * 40)
    out = tmp_path / "saliency.json"
    assert main(["eval", "saliency", "--model", str(tiny_llama_checkpoint), "--calib",
                 str(calib), "--layers", "1", "--neurons", "6", "--windows", "2",
                 "--seq-len", "16", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["windows"] == [2, 16] and set(printed["layers"]) == {"1"}
    layer = printed["layers"]["1"]
    assert layer["neurons"] == 6 and set(layer["spearman_vs_abs_change"]) == {
        "taylor only (gradient)", "jacobian only (gradient)", "magnitude only",
        "magrip, taylor", "magrip, jacobian"}

def test_ablation_signals_and_masked_neurons(model_and_windows):
    model, windows = model_and_windows
    magnitude = neuron_saliency(model, windows, SaliencyOptions(method="magnitude"))
    # contribution: ||u_i||_2 over the tokens, median-normalised (dense: averaged over batches)
    captured = []
    mlp = find_ffns(model)[0]
    handle = mlp.down_proj.register_forward_pre_hook(lambda m, i: captured.append(i[0]))
    try:
        with torch.no_grad():
            for batch in (windows[:2], windows[2:]):
                model(input_ids=torch.from_numpy(batch))
    finally:
        handle.remove()
    expected = np.mean([median_normalise(u.square().sum((0, 1)).sqrt().double().numpy(),
                                         np.ones(u.shape[-1], bool)) for u in captured], axis=0)
    np.testing.assert_allclose(magnitude[0], expected, rtol=1e-5)

    keep = [torch.ones(96, dtype=torch.bool), torch.ones(96, dtype=torch.bool)]
    keep[1][:10] = False
    scores = neuron_saliency(model, windows, SaliencyOptions(sensitivity="jacobian"), keep=keep)
    assert np.isneginf(scores[1][:10]).all() and np.isfinite(scores[1][10:]).all()
    assert np.median(scores[0]) == pytest.approx(2.0, rel=0.1)  # 1:1 of two median-1 signals

    first = neuron_saliency(model, windows, SaliencyOptions(method="random"), seed=1)
    again = neuron_saliency(model, windows, SaliencyOptions(method="random"), seed=1)
    np.testing.assert_array_equal(first[0], again[0])


def test_bad_saliency_options_are_rejected(model_and_windows):
    model, windows = model_and_windows
    with pytest.raises(ValueError, match="method must be one of"):
        neuron_saliency(model, windows, SaliencyOptions(method="l1"))
    with pytest.raises(ValueError, match="sensitivity must be one of"):
        neuron_saliency(model, windows, SaliencyOptions(sensitivity="hessian"))
