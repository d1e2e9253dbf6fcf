"""A trained ViT on disk: a directory with config.json and model.safetensors (no pickle).

config.json holds the ViTConfig, the role, label names, the preprocessing, and the
training record (recipe, metrics). The directory is written under a temporary name
and renamed into place, so a killed run never leaves a half checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from exporter.atomic_dir import AtomicDirectory
from exporter.vit.config import ROLES, ViTConfig
from exporter.vit.model import ViT
from runtime.errors import InvalidRequest
from runtime.vision.preprocess import Preprocessing

CHECKPOINT_FORMAT = "e2edge-vit-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class Checkpoint:
    model: ViT
    role: str
    label_names: list[str]
    preprocessing: Preprocessing
    record: dict[str, Any] = field(default_factory=dict)  # recipe, data, metrics

    @property
    def config(self) -> ViTConfig:
        return self.model.config


def save_checkpoint(checkpoint: Checkpoint, out: str | Path) -> Path:
    with AtomicDirectory(out) as target:
        state = {k: v.detach().contiguous().cpu() for k, v in checkpoint.model.state_dict().items()}
        save_file(state, str(target.dir / WEIGHTS_NAME))
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "role": checkpoint.role,
            "model": checkpoint.config.to_dict(),
            "label_names": checkpoint.label_names,
            "preprocessing": checkpoint.preprocessing.to_dict(),
            "record": checkpoint.record,
        }
        (target.dir / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return target.commit()


def load_checkpoint(path: str | Path) -> Checkpoint:
    root = Path(path).expanduser()
    config_path, weights_path = root / CONFIG_NAME, root / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{root}: not a ViT checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME}; "
            "train one with `e2edge train vit`)"
        )
    meta = json.loads(config_path.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{config_path}: not a {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} config "
            f"(format {meta.get('format')!r} v{meta.get('format_version')!r})"
        )
    if meta.get("role") not in ROLES:
        raise ValueError(f"{config_path}: role {meta.get('role')!r} is not one of {ROLES}")
    config = ViTConfig.from_dict(meta["model"])
    model = ViT(config)
    state = load_file(str(weights_path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights_path}: weights do not match the config (missing {missing}, "
            f"unexpected {unexpected})"
        )
    model.eval()
    return Checkpoint(
        model=model,
        role=meta["role"],
        label_names=list(meta["label_names"]),
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        record=meta.get("record", {}),
    )


def load_matching_checkpoint(
    path: str | Path, n_classes: int, preprocessing: Preprocessing, option: str, against: str,
) -> Checkpoint:
    """A checkpoint that must have these classes and preprocessing (a teacher against
    the data, an ensemble member against the first), or an error naming its path."""
    checkpoint = load_checkpoint(path)
    if checkpoint.config.n_classes != n_classes:
        raise InvalidRequest(
            option, f"{path} has {checkpoint.config.n_classes} classes, {against} {n_classes}",
        )
    if checkpoint.preprocessing != preprocessing:
        raise InvalidRequest(
            option, f"{path} was trained with other preprocessing (size, channels or "
            f"normalisation) than {against}; train it on the same data and preset",
        )
    return checkpoint
