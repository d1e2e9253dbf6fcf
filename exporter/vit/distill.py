"""Knowledge distillation from a full-precision teacher to the ternary MQA student.

    loss = ce_weight      * CE(student_logits, labels)                (label-smoothed)
         + kd_weight      * T^2 * KL(softmax(teacher / T) || softmax(student / T))
         + feature_weight * MSE(student_features, teacher_features)

Each weight multiplies exactly one term, so a weight of 0 removes that term and the
others keep their scale. (The reference code nests `alpha` into both the outer mix
and the inner feature term, so its feature term is weighted alpha^2 while its KL
term is alpha * (1 - gamma).) The T^2 factor keeps the KL gradients' magnitude
independent of T (Hinton et al. 2015): softening by T shrinks them by 1/T^2.

Features are the pooled, normed vectors before the head. When the widths differ, a
linear projection (trained with the student, dropped at export) maps student
features to the teacher's width.

Several teachers (`TeacherEnsemble`, `--teacher` given more than once) act as one:
their logits are averaged (the geometric mean of their probabilities, renormalised;
at any temperature T, since dividing by T commutes with the mean), which is a better
target than any one of them when they err on different images. Features come from
the first teacher alone: independently trained teachers' feature spaces are not
aligned, so their mean is no teacher's representation, while the first teacher is the
one a student initialised from a teacher starts from.

The student can start from the teacher's weights (`init_from_teacher`): every
tensor of matching shape is copied, and MQA's single K/V head is the mean of the
teacher's K/V heads (mean-pooling, as in GQA uptraining, Ainslie et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exporter.vit.config import DistillConfig
from exporter.vit.model import ViT


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * KL(p_teacher^T || p_student^T), averaged over the batch."""
    student_log_p = F.log_softmax(student_logits / t, dim=-1)
    teacher_log_p = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)
    return kl * (t * t)


class DistillationLoss(nn.Module):
    def __init__(
        self, config: DistillConfig, student_width: int, teacher_width: int,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.config = config
        self.label_smoothing = label_smoothing
        self.project = (
            nn.Identity() if student_width == teacher_width
            else nn.Linear(student_width, teacher_width)
        )

    def forward(
        self,
        student_logits: torch.Tensor,  # (B, C)
        student_features: torch.Tensor,  # (B, D_s)
        teacher_logits: torch.Tensor,  # (B, C)
        teacher_features: torch.Tensor,  # (B, D_t)
        labels: torch.Tensor,  # (B,)
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        ce = F.cross_entropy(student_logits, labels, label_smoothing=self.label_smoothing)
        kd = kd_kl(student_logits, teacher_logits, c.temperature)
        feat = F.mse_loss(self.project(student_features), teacher_features)
        loss = c.ce_weight * ce + c.kd_weight * kd + c.feature_weight * feat
        return loss, {"ce": ce.item(), "kd": kd.item(), "feature": feat.item()}


class TeacherEnsemble(nn.Module):
    """Frozen teachers with one `forward_with_features`: mean logits, first teacher's features."""

    def __init__(self, teachers: list[ViT]):
        super().__init__()
        if not teachers:
            raise ValueError("a teacher ensemble needs at least one teacher")
        classes = {t.config.n_classes for t in teachers}
        if len(classes) != 1:
            raise ValueError(f"teachers disagree on the number of classes: {sorted(classes)}")
        self.teachers = nn.ModuleList(teachers)

    @property
    def config(self):
        """The first teacher's architecture: the feature width the student matches."""
        return self.teachers[0].config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean logits: what the student learns from, and what `eval vit` scores."""
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.teachers[0].forward_with_features(x)
        if len(self.teachers) == 1:
            return logits, features
        others = [teacher(x) for teacher in self.teachers[1:]]
        return torch.stack([logits, *others]).mean(dim=0), features


@torch.no_grad()
def init_from_teacher(student: ViT, teacher: ViT) -> list[str]:
    """Copy the teacher's tensors into the student; returns the names not copied."""
    teacher_state = teacher.state_dict()
    group_from = teacher.config.n_kv_heads
    skipped = []
    for name, tensor in student.state_dict().items():
        source = teacher_state.get(name)
        if source is None:
            skipped.append(name)
            continue
        if source.shape != tensor.shape and name.split(".")[-2] in ("k", "v"):
            source = _pool_kv_heads(source, group_from, student.config.n_kv_heads)
        if source.shape != tensor.shape:
            skipped.append(name)
            continue
        tensor.copy_(source)
    return skipped


def _pool_kv_heads(tensor: torch.Tensor, n_from: int, n_to: int) -> torch.Tensor:
    """K/V weight (n_from*dh, D) or bias (n_from*dh,) -> n_to heads, each the mean of a group."""
    if n_from % n_to:
        return tensor
    head_dim = tensor.shape[0] // n_from
    grouped = tensor.reshape(n_to, n_from // n_to, head_dim, *tensor.shape[1:])
    return grouped.mean(dim=1).reshape(n_to * head_dim, *tensor.shape[1:])
