"""Allocation and the differentiable mask: every method lands exactly on the target ratio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.llm.checkpoint import load_torch_model
from exporter.magrip.allocation import select_keep, uniform_quotas
from exporter.magrip.mask import harden, initial_logits, ste_mask, train_logits
from exporter.magrip.options import MaskOptions, PruneOptions, SaliencyOptions
from exporter.magrip.pipeline import mean_loss, select_neurons, stage_targets
from exporter.magrip.saliency import neuron_saliency


def test_global_allocation_keeps_the_best_and_the_minimum_width():
    scores = [np.array([5.0, 4.0, 3.0, 2.0]), np.array([0.1, 0.2, 0.3, 0.4])]
    keep = select_keep(scores, 4, "global", [4, 4], [1, 1])
    assert keep[0].tolist() == [True, True, True, False]  # the globally best three
    assert keep[1].tolist() == [False, False, False, True]  # and layer 1's best one
    with pytest.raises(ValueError, match="minimum width"):
        select_keep(scores, 3, "global", [4, 4], [2, 2])
    scores[0][0] = -np.inf  # already pruned: never comes back
    assert not select_keep(scores, 5, "global", [4, 4], [1, 1])[0][0]


def test_uniform_allocation_is_exact_per_layer():
    assert uniform_quotas([96, 96, 48], 120) == [48, 48, 24]
    assert sum(uniform_quotas([7, 5, 3], 10)) == 10
    rng = np.random.default_rng(0)
    scores = [rng.random(96), rng.random(48)]
    keep = select_keep(scores, 72, "uniform", [96, 48], [1, 1])
    assert [int(k.sum()) for k in keep] == [48, 24]
    assert scores[1][keep[1]].min() > scores[1][~keep[1]].max()


def test_stage_schedule_is_one_coarse_pass_then_small_steps():
    assert stage_targets(1000, 600, 0.75, 3) == [700, 667, 633, 600]
    assert stage_targets(1000, 600, 0.75, 0) == [600]


@pytest.fixture(scope="module")
def model(tiny_gemma_checkpoint):
    return load_torch_model(tiny_gemma_checkpoint)


@pytest.mark.parametrize("method,allocation,ratio", [
    ("magrip", "global", 0.3), ("magrip", "uniform", 0.5), ("magnitude", "global", 0.5),
    ("gradient", "uniform", 0.2), ("random", "global", 0.7),
])
def test_selection_hits_the_target_ratio(model, method, allocation, ratio):
    windows = np.random.default_rng(1).integers(0, 300, size=(8, 32))
    options = PruneOptions(ratio=ratio, saliency=SaliencyOptions(method=method, batch_size=4),
                           allocation=allocation, min_width=8,
                           mask=MaskOptions(steps=6, batch_size=4))
    selection = select_neurons(model, windows, options)
    kept = [int(k.sum()) for k in selection.keep]
    assert sum(kept) == round((1 - ratio) * 192)
    assert min(kept) >= 8
    if allocation == "uniform":
        assert kept[0] == kept[1]
    assert [s["kept"] for s in selection.stages][-1] == sum(kept)
    assert (selection.mask is not None) == (method == "magrip")


def test_mask_training_holds_the_kept_fraction_and_hardens_exactly(model):
    windows = np.random.default_rng(2).integers(0, 300, size=(8, 32))
    rng = np.random.default_rng(3)
    keep = [rng.random(96) < 0.6, rng.random(96) < 0.6]
    priority = [np.stack([k * 1.0, rng.random(96)], axis=1) for k in keep]
    logits = initial_logits(priority, keep, "global")
    assert all(((lg > 0) == k).all() for lg, k in zip(logits, keep))  # starts at the staged set
    target = sum(int(k.sum()) for k in keep) / 192
    trained, log = train_logits(model, windows, logits,
                                target, MaskOptions(steps=24, lr=0.02, batch_size=4))
    assert log.steps == 24
    assert abs(log.kept_fraction_min - target) < 0.06
    assert abs(log.kept_fraction_max - target) < 0.06
    assert any((np.sign(a) != np.sign(b)).any() for a, b in zip(trained, logits))  # it learned
    final = harden(trained, round(target * 192), "global", [96, 96], [1, 1])
    assert sum(int(k.sum()) for k in final) == round(target * 192)


def _staged_start(seed: int):
    rng = np.random.default_rng(seed)
    keep = [rng.random(96) < 0.6, rng.random(96) < 0.6]
    priority = [np.stack([k * 1.0, rng.random(96)], axis=1) for k in keep]
    return keep, initial_logits(priority, keep, "global")


def test_the_judge_picks_the_best_mask_and_stops_when_it_stops_improving(model):
    windows = np.random.default_rng(5).integers(0, 300, size=(8, 32))
    keep, logits = _staged_start(6)
    scripted = iter([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 1.0, 1.0])  # best at the third check
    seen = []

    def judge(candidate):
        seen.append([c.copy() for c in candidate])
        return next(scripted)

    options = MaskOptions(steps=100, lr=0.02, batch_size=4, check_every=2, patience=3)
    trained, log = train_logits(model, windows, logits, 0.6, options, judge=judge)
    assert [step for step, _ in log.checks] == [0, 2, 4, 6, 8, 10]  # 3 checks past the best
    assert log.steps == 10 and log.best_step == 4
    assert all((a == b).all() for a, b in zip(trained, seen[2]))
    assert not all((a == b).all() for a, b in zip(seen[2], seen[-1]))  # it went on learning


def test_the_staged_mask_stays_when_no_trained_mask_beats_it(model):
    windows = np.random.default_rng(7).integers(0, 300, size=(8, 32))
    keep, logits = _staged_start(8)
    calls = []

    def judge(candidate):
        calls.append(1)
        return 1.0 if len(calls) == 1 else 2.0

    options = MaskOptions(steps=64, lr=0.02, batch_size=4, check_every=4, patience=2)
    trained, log = train_logits(model, windows, logits, 0.6, options, judge=judge)
    assert log.best_step == 0 and log.steps == 8
    assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(trained, logits))
    assert all(((a > 0) == k).all() for a, k in zip(trained, keep))  # the staged set


def test_refinement_keeps_the_mask_with_the_lowest_held_out_loss(model):
    """The reported held-out losses are those of the staged mask and of the mask returned."""
    windows = np.random.default_rng(9).integers(0, 300, size=(16, 32))
    options = PruneOptions(ratio=0.4, saliency=SaliencyOptions(batch_size=4), fine_steps=1,
                           mask=MaskOptions(steps=24, lr=0.05, batch_size=4, check_every=4))
    selection = select_neurons(model, windows, options)
    info = selection.mask
    held_out = windows[np.arange(16) % 8 == 7]
    assert info["held_out_windows"] == 2
    assert info["checks"][0][0] == 0
    assert info["held_out_loss_refined"] == min(loss for _, loss in info["checks"])
    assert info["held_out_loss_refined"] <= info["held_out_loss_staged"]
    assert mean_loss(model, held_out, selection.keep, 4) == pytest.approx(
        info["held_out_loss_refined"], abs=1e-5)
    assert info["accepted"] == (info["best_step"] > 0)


def test_straight_through_mask_is_hard_forward_and_soft_backward():
    logits = torch.tensor([-0.2, 0.0, 0.3], requires_grad=True)
    mask = ste_mask(logits, temperature=0.1)
    assert mask.tolist() == [0.0, 0.0, 1.0]
    mask.sum().backward()
    soft = torch.sigmoid(logits.detach() / 0.1)
    torch.testing.assert_close(logits.grad, soft * (1 - soft) / 0.1)


def test_a_shared_first_pass_gives_the_same_selection(model):
    """The sweep computes the dense saliency once per method for all ratios."""
    windows = np.random.default_rng(4).integers(0, 300, size=(4, 32))
    options = PruneOptions(ratio=0.4, saliency=SaliencyOptions(method="magnitude"),
                           fine_steps=1)
    shared = neuron_saliency(model, windows, options.saliency)
    a = select_neurons(model, windows, options)
    b = select_neurons(model, windows, options, dense_scores=shared)
    assert all((x == y).all() for x, y in zip(a.keep, b.keep))
