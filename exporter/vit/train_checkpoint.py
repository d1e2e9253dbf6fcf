"""One `e2edge train vit` run: the preset's model shaped for the data and the role,
optionally distilled from teachers, trained (training.py) and saved as a checkpoint
whose record says how it was made and how it scores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporter.vit.checkpoint import Checkpoint, load_matching_checkpoint, save_checkpoint
from exporter.vit.config import DistillConfig, ViTConfig, ViTRecipe, get_preset
from exporter.vit.distill import TeacherEnsemble, init_from_teacher
from exporter.vit.medmnist import MedMNIST, load_medmnist, resolve_npz
from exporter.vit.model import ViT, count_parameters
from exporter.vit.training import TrainResult, train
from runtime.errors import InvalidRequest
from runtime.vision.preprocess import Preprocessing


@dataclass(frozen=True)
class ViTTrainConfig:
    """Everything one ViT training run depends on; the CLI resolves the recipe."""

    role: str  # teacher | student | fp-student
    preset: str  # names the architecture (config.PRESETS)
    data: str  # MedMNIST-style npz: a path or a data-file name
    out: Path
    recipe: ViTRecipe
    teachers: tuple[str, ...] = ()  # checkpoint directories; several: their mean logits
    ternary: str = "ffn"  # which student layers are ternary: ffn | all
    init: str = "teacher"  # a student with teachers starts from the first one's weights
    distill: DistillConfig = field(default_factory=DistillConfig)
    seed: int = 0
    time_budget_s: float | None = None
    threads: int | None = None  # torch CPU threads; None: torch's own choice
    device: str = "cpu"
    monitor: tuple[str, ...] = ()  # splits scored every epoch for learning curves

    def __post_init__(self) -> None:
        if self.teachers and self.role == "teacher":
            raise InvalidRequest("--teacher", "a teacher is trained on labels alone")


def train_checkpoint(config: ViTTrainConfig,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and save the checkpoint; return its summary (path, best epoch, metrics)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    data_path = resolve_npz(config.data)
    data = load_medmnist(data_path)
    shape = get_preset(config.preset).model.for_data(data.n_classes, data.channels)
    model_config = shape.for_role(config.role, config.ternary)
    spec = _preprocessing(data, model_config)
    teacher = _teachers(config.teachers, model_config.n_classes, spec)
    model, not_copied = _student(config, model_config, teacher)
    log(f"{config.role}: {count_parameters(model):,} parameters, "
        f"ternary={model_config.ternary}, kv_heads={model_config.n_kv_heads}, "
        f"{config.recipe.epochs} epochs on {data_path.name}")
    result = train(
        model, data, spec, config.recipe, seed=config.seed, teacher=teacher,
        distill=config.distill if teacher is not None else None,
        time_budget_s=config.time_budget_s, on_epoch=lambda row: log(_epoch_line(row)),
        device=config.device, monitor=config.monitor,
    )
    record = _record(config, data_path, teacher is not None, not_copied, model, result)
    out = save_checkpoint(
        Checkpoint(model=model, role=config.role, label_names=data.label_names,
                   preprocessing=spec, record=record),
        config.out,
    )
    summary = {"checkpoint": str(out), "best_epoch": result.best_epoch,
               "seconds": round(result.seconds, 1), **result.metrics}
    if result.teacher_metrics is not None:
        summary["teacher"] = result.teacher_metrics
        log(_teacher_comparison(result, len(config.teachers)))
    return summary


def _preprocessing(data: MedMNIST, config: ViTConfig) -> Preprocessing:
    """The model's input: its size and channels, normalised by the train split's statistics."""
    mean, std = data.normalisation(config.channels)
    return Preprocessing(size=config.image_size, channels=config.channels, mean=mean, std=std)


def _teachers(paths: tuple[str, ...], n_classes: int,
              spec: Preprocessing) -> TeacherEnsemble | None:
    """The frozen teachers (one ensemble of all), checked against the student's data."""
    if not paths:
        return None
    teachers = []
    for path in paths:
        teacher = load_matching_checkpoint(path, n_classes, spec, "--teacher", "the data").model
        for p in teacher.parameters():
            p.requires_grad_(False)
        teachers.append(teacher)
    return TeacherEnsemble(teachers)


def _student(config: ViTTrainConfig, model_config: ViTConfig,
             teacher: TeacherEnsemble | None) -> tuple[ViT, list[str]]:
    """The seeded model to train, and the tensors it could not copy from its teacher."""
    torch.manual_seed(config.seed)
    model = ViT(model_config)
    not_copied: list[str] = []
    if teacher is not None and config.init == "teacher":
        not_copied = init_from_teacher(model, teacher.teachers[0])
    return model, not_copied


def _epoch_line(row: dict) -> str:
    return (f"epoch {row['epoch']:3d} loss {row['loss']:.4f} val acc "
            f"{row['val_accuracy']:.4f} auc {row['val_auc']:.4f} loss {row['val_loss']:.4f} "
            f"({row['seconds']:.1f} s)")


def _record(config: ViTTrainConfig, data_path: Path, distilled: bool, not_copied: list[str],
            model: ViT, result: TrainResult) -> dict[str, Any]:
    """How the checkpoint was made and how it scores (its config.json's record)."""
    return {
        "preset": config.preset,
        "data": data_path.name,
        "data_path": str(data_path.resolve()),
        "seed": config.seed,
        "device": config.device,
        "recipe": dataclasses.asdict(config.recipe),
        "teacher": str(config.teachers[0]) if config.teachers else None,  # the one init uses
        "teachers": [str(path) for path in config.teachers],
        "init": config.init if distilled else "random",
        "not_copied_from_teacher": not_copied,
        "distillation": dataclasses.asdict(config.distill) if distilled else None,
        "parameters": count_parameters(model),
        **result.to_dict(),
    }


def _teacher_comparison(result: TrainResult, n_teachers: int) -> str:
    which = f"ensemble of {n_teachers}" if n_teachers > 1 else "teacher"
    student = result.metrics["test"]["accuracy"]
    teacher = result.teacher_metrics["test"]["accuracy"]
    return (f"test accuracy: student {student:.4f}, {which} {teacher:.4f} "
            f"({100 * (student - teacher):+.1f} points)")
