"""The training loop: AdamW, warm-up + cosine schedule, optional distillation,
optional weight averaging (EMA), model selection on the validation split, metrics on
val and test.

With a time budget, the first epochs are timed and the schedule is shortened to the
number of epochs that fit, so the learning rate still decays to its floor instead
of training being cut off at a high rate.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporter.schedule import warmup_cosine
from exporter.vit.config import DistillConfig, ViTRecipe
from exporter.vit.distill import DistillationLoss, TeacherEnsemble
from exporter.vit.medmnist import Augmentation, MedMNIST, Split, batches
from exporter.vit.metrics import classification_metrics
from exporter.vit.model import ViT
from runtime.vision.preprocess import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    seconds: float
    metrics: dict[str, dict[str, float]]  # split -> accuracy, auc
    history: list[dict[str, float]] = field(default_factory=list)
    # The teacher's (or ensemble's mean-logit) scores on the same splits, so "within N
    # points of its teacher" can be read off the student's checkpoint.
    teacher_metrics: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 1),
            "metrics": self.metrics,
            "teacher_metrics": self.teacher_metrics,
            "history": self.history,
        }


@torch.no_grad()
def predict(
    model: ViT | TeacherEnsemble, split: Split, spec: Preprocessing, batch_size: int = 256,
) -> np.ndarray:
    """Inference-mode (quantised, no dropout) class probabilities, (N, n_classes)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [
        F.softmax(model(torch.from_numpy(pixels).to(device)), dim=-1).cpu().numpy()
        for pixels, _ in batches(split, spec, batch_size)
    ]
    model.train(was_training)
    return np.concatenate(out)


def evaluate(
    model: ViT | TeacherEnsemble, split: Split, spec: Preprocessing, batch_size: int = 256,
) -> dict:
    return classification_metrics(predict(model, split, spec, batch_size), split.labels)


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema = d * ema + (1 - d) * weights, with d ramped up over the first steps
    (d = min(decay, (1 + step) / (10 + step))) so the random start fades out quickly."""
    d = min(decay, (1 + step) / (10 + step))
    for averaged, current in zip(ema_model.parameters(), model.parameters()):
        averaged.lerp_(current, 1.0 - d)
    for averaged, current in zip(ema_model.buffers(), model.buffers()):
        averaged.copy_(current)


def selection_key(rule: str, val: dict[str, float], epoch: int) -> tuple[float, ...]:
    """The epoch with the largest key is kept; on equal keys the earlier one stays."""
    if rule == "val_accuracy":
        return (val["accuracy"], val["auc"])
    if rule == "val_loss":
        return (-val["loss"],)
    if rule == "last":
        return (epoch,)
    raise ValueError(f"unknown selection rule {rule!r}")


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and position embeddings (all 1-D or pos_embed)."""
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or name.endswith("pos_embed") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train(
    model: ViT,
    data: MedMNIST,
    spec: Preprocessing,
    recipe: ViTRecipe,
    seed: int = 0,
    teacher: ViT | TeacherEnsemble | None = None,
    distill: DistillConfig | None = None,
    time_budget_s: float | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    device: str = "cpu",
    monitor: tuple[str, ...] = (),
) -> TrainResult:
    """Train in place; on return `model` holds the weights of the epoch that
    `recipe.select` picks (moved back to the CPU). `monitor` names further splits (e.g.
    "test") scored every epoch into the history, for learning curves; they never
    influence the selection."""
    torch.manual_seed(seed)
    learner = _learner(model, recipe, seed, teacher, distill, device)
    clock = _Clock(time_budget_s)
    train_split = data.splits["train"]
    steps_per_epoch = math.ceil(len(train_split.labels) / recipe.batch_size)
    aug = Augmentation(
        recipe.hflip, recipe.vflip, recipe.max_shift, recipe.rotation, recipe.scale,
    )
    epochs = recipe.epochs
    best_key: tuple[float, ...] | None = None
    best_state, best_epoch = None, 0
    history: list[dict[str, float]] = []
    epoch = 0
    while epoch < epochs:
        epoch_start = time.perf_counter()
        total_steps = epochs * steps_per_epoch
        warmup = min(recipe.warmup_epochs * steps_per_epoch, total_steps // 4)
        losses = _train_epoch(learner, train_split, spec, aug, total_steps, warmup, clock, epoch)
        val = evaluate(learner.selected, data.splits["val"], spec, recipe.eval_batch_size)
        epoch_s = time.perf_counter() - epoch_start
        if epoch < 2 and time_budget_s is not None:
            # Re-estimated after the second epoch too: the first pays for warm-up.
            epochs = _epochs_that_fit(recipe.epochs, epochs, epoch, epoch_s, clock)
        row = _history_row(epoch, losses, val, epoch_s)
        for split in monitor:
            scores = evaluate(learner.selected, data.splits[split], spec, recipe.eval_batch_size)
            row.update({f"{split}_{name}": value for name, value in scores.items()})
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        key = selection_key(recipe.select, val, epoch)
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch + 1
            best_state = copy.deepcopy(learner.selected.state_dict())
        epoch += 1
        if clock.spent():
            if epoch < epochs:
                log.warning("time budget spent after %d of %d epochs", epoch, epochs)
            epochs = epoch

    if best_state is not None:
        model.load_state_dict(best_state)
    return _final_scores(model, teacher, data, spec, recipe, epochs, best_epoch, history, clock)


@dataclass
class _Clock:
    """The run's time budget (None: no limit)."""

    budget_s: float | None
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s


@dataclass
class _Learner:
    """What one optimisation step touches: the model, its optimizer, the loss, the average."""

    model: ViT
    optimizer: torch.optim.Optimizer
    recipe: ViTRecipe
    rng: np.random.Generator  # augmentation, mixup and batch order
    device: str
    teacher: ViT | TeacherEnsemble | None = None
    loss_fn: DistillationLoss | None = None  # with a teacher
    ema_model: nn.Module | None = None  # the averaged copy, never trained itself
    step: int = 0

    @property
    def selected(self) -> nn.Module:
        """The weights that are validated, selected and saved: the average when it is on."""
        return self.ema_model if self.ema_model is not None else self.model

    def train_step(self, pixels: np.ndarray, labels: np.ndarray, lr: float) -> float:
        """One optimizer step on a batch (mixed up when the recipe says so); its loss."""
        recipe = self.recipe
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        mixes = [(1.0, labels)]  # (weight, labels) pairs of the label loss
        if recipe.mixup > 0:
            lam = float(self.rng.beta(recipe.mixup, recipe.mixup))
            partner = self.rng.permutation(len(labels))
            pixels = lam * pixels + (1 - lam) * pixels[partner]
            mixes = [(lam, labels), (1 - lam, labels[partner])]
        loss = self._loss(torch.from_numpy(pixels).to(self.device), mixes)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), recipe.grad_clip)
        self.optimizer.step()
        if self.ema_model is not None:
            update_ema(self.ema_model, self.model, recipe.ema, self.step)
        self.step += 1
        return loss.item()

    def _loss(self, images: torch.Tensor, mixes: list[tuple[float, np.ndarray]]) -> torch.Tensor:
        logits, features = self.model.forward_with_features(images)
        distilling = self.loss_fn is not None and self.teacher is not None
        if distilling:
            with torch.no_grad():
                t_logits, t_features = self.teacher.forward_with_features(images)
        loss = torch.zeros((), device=self.device)
        # Only the label term depends on the labels, so blending whole losses blends
        # exactly the cross-entropy (the mix weights sum to 1: KL, features unchanged).
        for weight, y in mixes:
            targets = torch.from_numpy(y).to(self.device)
            if distilling:
                term, _ = self.loss_fn(logits, features, t_logits, t_features, targets)
            else:
                term = F.cross_entropy(
                    logits, targets, label_smoothing=self.recipe.label_smoothing,
                )
            loss = loss + weight * term
        return loss


def _learner(model: ViT, recipe: ViTRecipe, seed: int, teacher: ViT | TeacherEnsemble | None,
             distill: DistillConfig | None, device: str) -> _Learner:
    """The model (and teacher) on `device`, with the loss, optimizer and average to train it."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # training only; export runs fp32 on CPU
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    rng = np.random.default_rng(seed)
    loss_fn: DistillationLoss | None = None
    if teacher is not None:
        teacher.eval()
        loss_fn = DistillationLoss(
            distill or DistillConfig(), model.config.width, teacher.config.width,
            recipe.label_smoothing,
        ).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False) if recipe.ema > 0 else None
    trainable = [model] + ([loss_fn] if loss_fn is not None else [])
    optimizer = torch.optim.AdamW(_param_groups(trainable, recipe.weight_decay), lr=recipe.lr)
    return _Learner(model, optimizer, recipe, rng, device, teacher, loss_fn, ema_model)


def _train_epoch(learner: _Learner, split: Split, spec: Preprocessing, aug: Augmentation,
                 total_steps: int, warmup: int, clock: _Clock, epoch: int) -> list[float]:
    """One pass over the train split (cut short when the time budget runs out); its losses."""
    learner.model.train()
    recipe = learner.recipe
    losses: list[float] = []
    for pixels, labels in batches(split, spec, recipe.batch_size, learner.rng, aug):
        if clock.spent():
            log.warning("time budget spent %d steps into epoch %d", len(losses), epoch + 1)
            break  # a large model on a CPU may not finish one epoch in the budget
        lr = warmup_cosine(learner.step, warmup, total_steps, recipe.lr, recipe.min_lr)
        losses.append(learner.train_step(pixels, labels, lr))
    return losses


def _epochs_that_fit(planned: int, epochs: int, epoch: int, epoch_s: float,
                     clock: _Clock) -> int:
    """The schedule's length once `epoch` took `epoch_s`: as many epochs as the budget fits."""
    left = clock.budget_s - clock.elapsed()
    fit = min(planned, epoch + 1 + max(0, int(left // max(epoch_s, 1e-6))))
    if fit != epochs:
        log.warning(
            "time budget %.0f s fits %d of %d epochs (%.1f s each): shortening the "
            "schedule", clock.budget_s, fit, planned, epoch_s,
        )
    return fit


def _history_row(epoch: int, losses: list[float], val: dict[str, float],
                 epoch_s: float) -> dict[str, float]:
    return {
        "epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
        "val_accuracy": val["accuracy"], "steps": len(losses),
        "val_auc": val["auc"], "val_loss": val["loss"], "seconds": round(epoch_s, 2),
    }


def _final_scores(model: ViT, teacher: ViT | TeacherEnsemble | None, data: MedMNIST,
                  spec: Preprocessing, recipe: ViTRecipe, epochs: int, best_epoch: int,
                  history: list[dict[str, float]], clock: _Clock) -> TrainResult:
    """The selected model (and its teacher) on the CPU, scored on val and test."""
    model.cpu().eval()
    metrics = {
        split: evaluate(model, data.splits[split], spec, recipe.eval_batch_size)
        for split in ("val", "test")
    }
    teacher_metrics = None
    if teacher is not None:
        teacher.cpu()
        teacher_metrics = {
            split: evaluate(teacher, data.splits[split], spec, recipe.eval_batch_size)
            for split in ("val", "test")
        }
    return TrainResult(
        epochs_run=epochs, best_epoch=best_epoch, seconds=clock.elapsed(),
        metrics=metrics, history=history, teacher_metrics=teacher_metrics,
    )
