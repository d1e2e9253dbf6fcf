"""ViT shapes and training settings: frozen dataclasses and a registry of named presets.

A preset fixes the architecture and the training recipe; the data decides the
number of classes and channels (`ViTConfig.for_data`), and the role decides the
attention kind and which layers are ternary (`ViTConfig.for_role`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

ROLES = ("teacher", "student", "fp-student")
TERNARY_MODES = ("none", "ffn", "all")


@dataclass(frozen=True)
class ViTConfig:
    """A vision transformer: patch embedding, pre-norm blocks, mean pool, norm, head."""

    image_size: int = 28
    channels: int = 3
    patch_size: int = 4
    width: int = 64
    depth: int = 3
    n_heads: int = 8
    n_kv_heads: int = 1  # 1: multi-query attention; n_heads: ordinary multi-head attention
    ffn_width: int = 256
    n_classes: int = 2
    ternary: str = "none"  # which linears are BitLinear: none | ffn | all (q, k, v, o too)
    dropout: float = 0.0  # on attention and FFN outputs, training only
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        checks = [
            (self.image_size > 0 and self.patch_size > 0, "image_size and patch_size > 0"),
            (self.image_size % self.patch_size == 0, "image_size divisible by patch_size"),
            (self.channels in (1, 3), "channels 1 or 3"),
            (self.width % self.n_heads == 0, "width divisible by n_heads"),
            (0 < self.n_kv_heads <= self.n_heads, "0 < n_kv_heads <= n_heads"),
            (self.n_heads % self.n_kv_heads == 0, "n_heads divisible by n_kv_heads"),
            (self.depth > 0 and self.ffn_width > 0, "depth and ffn_width > 0"),
            (self.n_classes >= 2, "n_classes >= 2"),
            (self.ternary in TERNARY_MODES, f"ternary one of {TERNARY_MODES}"),
            (0.0 <= self.dropout < 1.0, "0 <= dropout < 1"),
        ]
        for ok, rule in checks:
            if not ok:
                raise ValueError(f"invalid ViTConfig: needs {rule} ({self})")

    @property
    def head_dim(self) -> int:
        return self.width // self.n_heads

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size * self.patch_size

    def for_data(self, n_classes: int, channels: int) -> ViTConfig:
        return replace(self, n_classes=n_classes, channels=channels)

    def for_role(self, role: str, ternary: str = "ffn") -> ViTConfig:
        """teacher: MHA, full precision; student: MQA + ternary; fp-student: MQA, fp."""
        if role == "teacher":
            return replace(self, n_kv_heads=self.n_heads, ternary="none")
        if role == "student":
            if ternary == "none":
                raise ValueError("a student is ternary: use --ternary ffn or all")
            return replace(self, n_kv_heads=1, ternary=ternary)
        if role == "fp-student":
            return replace(self, n_kv_heads=1, ternary="none")
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ViTConfig fields: {sorted(unknown)}")
        return cls(**data)


SELECT_RULES = ("val_accuracy", "val_loss", "last")


@dataclass(frozen=True)
class ViTRecipe:
    """The recipe: AdamW with warm-up and cosine decay, label smoothing, augmentation."""

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    hflip: bool = True  # augmentation: random horizontal flip
    vflip: bool = False  # random vertical flip (fundus images have no "up")
    max_shift: int = 2  # random translation in pixels at the model's input size
    rotation: float = 0.0  # random rotation, max degrees either way (0: off)
    scale: float = 0.0  # random zoom by a factor in [1 - scale, 1 + scale] (0: off)
    eval_batch_size: int = 256
    # Decay per step of an exponential moving average of the weights (0: off). When on,
    # the average is what is validated, selected and saved.
    ema: float = 0.0
    # mixup (Zhang et al. 2018): Beta(alpha, alpha) blend of image pairs and of their
    # label losses (0: off). The teacher sees the same blended images.
    mixup: float = 0.0
    # Which epoch's weights are kept: the best validation accuracy (AUC breaks ties), the
    # lowest validation log loss, or the last epoch. On small validation splits accuracy
    # moves in steps of one image, so many epochs tie and the pick is noisy.
    select: str = "val_accuracy"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs and batch sizes must be >= 1")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError("need 0 < min_lr <= lr")
        if self.max_shift < 0 or self.warmup_epochs < 0:
            raise ValueError("max_shift and warmup_epochs must be >= 0")
        if not (0 <= self.rotation <= 180 and 0 <= self.scale < 1):
            raise ValueError("need 0 <= rotation <= 180 degrees and 0 <= scale < 1")
        if not 0 <= self.ema < 1:
            raise ValueError("need 0 <= ema < 1")
        if self.mixup < 0:
            raise ValueError("need mixup >= 0")
        if self.select not in SELECT_RULES:
            raise ValueError(f"select must be one of {SELECT_RULES}, got {self.select!r}")


@dataclass(frozen=True)
class DistillConfig:
    """The weights of the distillation loss's three terms, and its temperature (distill.py)."""

    ce_weight: float = 0.5
    kd_weight: float = 0.5
    feature_weight: float = 0.1
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if min(self.ce_weight, self.kd_weight, self.feature_weight) < 0:
            raise ValueError("distillation weights must be >= 0")
        if self.ce_weight + self.kd_weight + self.feature_weight == 0:
            raise ValueError("at least one distillation weight must be > 0")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")


@dataclass(frozen=True)
class Preset:
    model: ViTConfig
    train: ViTRecipe
    description: str


PRESETS: dict[str, Preset] = {
    # The paper's student: 224 px, patch 7 (1024 tokens), width 512, depth 3, 8 heads
    # sharing one K/V head, FFN 2048 -> about 8.6 M parameters with 3 channels.
    "bitmedvit": Preset(
        model=ViTConfig(
            image_size=224, patch_size=7, width=512, depth=3, n_heads=8, ffn_width=2048,
            dropout=0.1,
        ),
        train=ViTRecipe(epochs=100, batch_size=32, lr=3e-4, warmup_epochs=5, max_shift=16),
        description="BitMedViT (Walczak et al. 2025) shape: 224 px, patch 7, width 512",
    ),
    # Sized for 28 px MedMNIST on a couple of CPU cores: 49 tokens of width 128. Width
    # 128 rather than 64 so that the ternary blocks outweigh the full-precision patch
    # and position embeddings, which otherwise cap the --ternary all size ratio below 10x.
    "mnist28": Preset(
        model=ViTConfig(
            image_size=28, patch_size=4, width=128, depth=3, n_heads=8, ffn_width=512,
            dropout=0.1,
        ),
        train=ViTRecipe(epochs=100),
        description="28 px MedMNIST: patch 4 (49 tokens), width 128, depth 3, FFN 512",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
