"""Differentiable neuron mask: learnable logits, hard forward, straight-through backward.

Each neuron i has a logit phi_i; the forward pass uses the hard mask
m_i = 1[phi_i > 0] (the network sees exactly the pruned model), the backward pass
the gradient of sigmoid(phi_i / T) (straight-through), so phi_i learns whether the
task loss wants neuron i back or gone. Weights stay frozen. A quadratic penalty holds
the kept fraction f = mean(m) at the target t:

    loss = CE + lambda * (f - t)^2,

with lambda set once, at the first step, so that a 1 % drift of f pushes each logit
as hard as the mean task gradient (`penalty` = 1) whatever the model's loss scale.

The logits start from the staged saliency ranking: in rank units, phi = (K - 1/2 - p)/N
for the neuron at rank position p of N (K kept), so the kept set is exactly the
staged one and only neurons near the boundary can cross it early in training.
`harden` then keeps the top neurons by logit under the allocation rule, so the
final count is exact.

How long to train is decided on data the mask never trains on: given a `judge` (the
loss of a hardened mask on held-out calibration windows), the training judges the
starting mask and every `check_every` steps, keeps the best logits seen, and stops
after `patience` checks without improvement. Too short a training leaves the staged
ranking almost as it was; too long fits the mask to the training windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from exporter.magrip.allocation import select_keep
from exporter.magrip.ffn import NeuronMasks, find_ffns
from exporter.magrip.options import MaskOptions

DRIFT_UNIT = 0.01  # the penalty scale is defined at a 1 % kept-fraction drift


def ste_mask(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(W,) hard 0/1 values in the forward pass, sigmoid(logits/T)'s gradient backward."""
    soft = torch.sigmoid(logits / temperature)
    hard = (logits > 0).to(logits.dtype)
    return hard + (soft - soft.detach())


def initial_logits(priority: Sequence[np.ndarray], keep: Sequence[np.ndarray],
                   allocation: str) -> list[np.ndarray]:
    """Logits in rank units from a per-neuron priority (higher = keep first).

    priority[l] is (W, 2): (stage key, score), compared lexicographically; the kept
    neurons must have the highest stage key. Global allocation ranks all layers on one
    axis, uniform each layer on its own.
    """
    if allocation == "global":
        scopes = [list(range(len(priority)))]
    else:
        scopes = [[layer] for layer in range(len(priority))]
    logits = [np.zeros(len(k)) for k in keep]
    for scope in scopes:
        stage = np.concatenate([priority[i][:, 0] for i in scope])
        score = np.concatenate([priority[i][:, 1] for i in scope])
        kept = np.concatenate([keep[i] for i in scope])
        order = np.lexsort((-score, -stage))  # best first
        if not kept[order[: kept.sum()]].all():
            raise ValueError("priorities must rank every kept neuron above the pruned ones")
        position = np.empty(len(order))
        position[order] = np.arange(len(order))
        values = (kept.sum() - 0.5 - position) / len(order)
        offsets = np.cumsum([0] + [len(keep[i]) for i in scope])
        for j, layer in enumerate(scope):
            logits[layer] = values[offsets[j] : offsets[j + 1]]
    return logits


@dataclass
class MaskTrainingLog:
    steps: int  # steps run (fewer than asked when the judge stopped the training)
    first_loss: float
    last_loss: float
    kept_fraction_min: float  # of the hard mask over the training steps
    kept_fraction_max: float
    target_fraction: float
    best_step: int  # the step whose logits are returned (0: the starting ones)
    checks: list[tuple[int, float]] = field(default_factory=list)  # (step, judged loss)


def train_logits(
    model: nn.Module,
    windows: np.ndarray,  # (N, S) int64 calibration windows for the mask training
    logits: Sequence[np.ndarray],  # per layer (W,) initial logits
    target_fraction: float,
    options: MaskOptions,
    judge: Callable[[list[np.ndarray]], float] | None = None,
) -> tuple[list[np.ndarray], MaskTrainingLog]:
    """Train the mask logits with the weights frozen; return (logits, log).

    Without a judge the logits after the last step are returned; with one, the best
    judged logits (lower is better), the starting ones included.
    """
    ffns = find_ffns(model)
    params = [nn.Parameter(torch.tensor(v, dtype=torch.float32)) for v in logits]
    masks = NeuronMasks([None] * len(ffns))
    trainer = _MaskTrainer(model, params, target_fraction, options)
    held_out = None if judge is None else _HeldOutChecks(judge, options.patience, masks, params)
    with _frozen(model), masks.applied(ffns):
        if held_out is not None:
            held_out.check(0)
        for step in range(options.steps):
            start = (step * options.batch_size) % len(windows)
            trainer.step(torch.from_numpy(windows[start : start + options.batch_size]), masks)
            done = step + 1
            due = done % options.check_every == 0 or done == options.steps
            if held_out is not None and due and not held_out.check(done):
                break
    if held_out is not None and held_out.best is not None:
        best_step, result = held_out.best[0], held_out.best[2]
    else:
        best_step, result = len(trainer.losses), _snapshot(params)
    checks = held_out.checks if held_out is not None else []
    log = MaskTrainingLog(
        steps=len(trainer.losses),
        first_loss=trainer.losses[0] if trainer.losses else float("nan"),
        last_loss=trainer.losses[-1] if trainer.losses else float("nan"),
        kept_fraction_min=min(trainer.fractions, default=target_fraction),
        kept_fraction_max=max(trainer.fractions, default=target_fraction),
        target_fraction=target_fraction,
        best_step=best_step,
        checks=[(step, round(loss, 6)) for step, loss in checks],
    )
    return result, log


class _MaskTrainer:
    """Steps of the mask logits: task loss plus the kept-fraction penalty (module docstring)."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter], target_fraction: float,
                 options: MaskOptions):
        self.model = model
        self.params = params
        self.target_fraction = target_fraction
        self.options = options
        self.optimizer = torch.optim.Adam(params, lr=options.lr)
        self.total = sum(p.numel() for p in params)
        self.scale: float | None = None  # the penalty's weight, set at the first step
        self.fractions: list[float] = []  # kept fraction of the hard mask, per step
        self.losses: list[float] = []  # task loss, per step

    def step(self, batch: torch.Tensor, masks: NeuronMasks) -> None:
        """One Adam step on a (B, S) batch of windows."""
        values = [ste_mask(p, self.options.temperature) for p in self.params]
        for v in values:
            v.retain_grad()
        masks.values = list(values)
        task = self.model(input_ids=batch, labels=batch).loss
        kept = torch.stack([v.sum() for v in values]).sum() / self.total
        loss = task
        if self.scale is not None:
            loss = task + self.scale * (kept - self.target_fraction) ** 2
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.scale is None:
            task_grad = torch.cat([v.grad.abs() for v in values]).mean().item()
            # d/dm_i of scale*(f-t)^2 at |f-t| = DRIFT_UNIT equals penalty * task_grad
            self.scale = self.options.penalty * task_grad * self.total / (2 * DRIFT_UNIT)
        self.optimizer.step()
        self.fractions.append(kept.item())
        self.losses.append(task.item())


class _HeldOutChecks:
    """The judge's verdicts on the logits: the best seen, and when patience runs out."""

    def __init__(self, judge: Callable[[list[np.ndarray]], float], patience: int,
                 masks: NeuronMasks, params: list[nn.Parameter]):
        self.judge = judge
        self.patience = patience
        self.masks = masks
        self.params = params
        self.checks: list[tuple[int, float]] = []  # (step, judged loss)
        self.best: tuple[int, float, list[np.ndarray]] | None = None  # (step, loss, logits)
        self.stale = 0  # checks since the best one

    def check(self, step: int) -> bool:
        """Judge the logits at `step`; False once patience has run out."""
        logits_now = _snapshot(self.params)
        training_values = self.masks.values
        self.masks.values = [None] * len(training_values)  # the judge runs unmasked
        try:
            loss = float(self.judge(logits_now))
        finally:
            self.masks.values = training_values
        self.checks.append((step, loss))
        if self.best is None or loss < self.best[1]:
            self.best, self.stale = (step, loss, logits_now), 0
        else:
            self.stale += 1
        return not (self.patience and self.stale >= self.patience)


def _snapshot(params: list[nn.Parameter]) -> list[np.ndarray]:
    return [p.detach().double().numpy().copy() for p in params]


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with its weights frozen; their requires_grad comes back after."""
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)


def harden(
    logits: Sequence[np.ndarray],
    keep_total: int,
    allocation: str,
    original_widths: Sequence[int],
    min_widths: Sequence[int],
) -> list[np.ndarray]:
    """The final 0/1 mask: the top `keep_total` neurons by logit under the allocation rule."""
    return select_keep(logits, keep_total, allocation, original_widths, min_widths)
