"""A tiny ViT built in a second without a dataset: synthetic MedMNIST-style data and a
random-weight checkpoint that exports and verifies like a trained one.

`e2edge selftest` exports this checkpoint to run every backend on a ternary package;
the tests train it briefly on the same synthetic data. The synthetic classes are
learnable in a few steps: class c brightens the image by c steps over noise and adds
a bright square in a class-dependent corner, so a trained model must read the pixels.
Nothing here imports torch until a checkpoint is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY = dict(image_size=8, patch_size=2, width=32, depth=1, n_heads=4, ffn_width=64)
# std of the random weights: the default 0.02 leaves the class probabilities within a
# few 0.01 of uniform, and an fp16 backend could flip top-1 at such a near tie
RANDOM_WEIGHT_STD = 0.2


def write_synthetic_npz(
    path: Path, n_classes: int = 3, channels: int = 1, size: int = 12,
    counts: tuple[int, int, int] = (96, 24, 32), seed: int = 0, flat_labels: bool = False,
) -> Path:
    """{train,val,test}_{images,labels} of `counts` images, (N, size, size[, channels]) uint8."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts):
        labels = rng.integers(0, n_classes, size=n)
        brightness = 50 * labels[:, None, None, None]
        images = rng.normal(60, 25, size=(n, size, size, channels)) + brightness
        half = size // 2
        for i, c in enumerate(labels):
            y, x = divmod(int(c) % 4, 2)
            images[i, y * half:(y + 1) * half, x * half:(x + 1) * half] += 60
        images = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = images[..., 0] if channels == 1 else images
        arrays[f"{split}_labels"] = labels if flat_labels else labels[:, None]
    np.savez(path, **arrays)
    return path


def tiny_vit(npz: Path, role: str = "student", ternary: str = "ffn", seed: int = 0,
             shape: dict | None = None):
    """(untrained ViT of the TINY shape, or of `shape`, for `npz`'s classes and channels,
    its Preprocessing, the loaded data)."""
    import torch

    from exporter.vit.config import ViTConfig
    from exporter.vit.medmnist import load_medmnist
    from exporter.vit.model import ViT
    from runtime.vision.preprocess import Preprocessing

    data = load_medmnist(npz)
    config = ViTConfig(**(shape or TINY)).for_data(data.n_classes, data.channels)
    config = config.for_role(role, ternary)
    mean, std = data.normalisation(config.channels)
    spec = Preprocessing(size=config.image_size, channels=config.channels, mean=mean, std=std)
    torch.manual_seed(seed)
    return ViT(config), spec, data


def make_random_vit_checkpoint(out: Path, npz: Path, ternary: str = "ffn", seed: int = 0) -> Path:
    """A student checkpoint of random weights (std RANDOM_WEIGHT_STD) whose record points
    at `npz`, so `export_vit` verifies the package on its test split."""
    import torch

    from exporter.vit.checkpoint import Checkpoint, save_checkpoint

    model, spec, data = tiny_vit(npz, "student", ternary, seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:  # weights and position embeddings; biases and norms as made
                param.normal_(0.0, RANDOM_WEIGHT_STD)
    record = {"data": npz.name, "data_path": str(npz), "random_weights": {
        "std": RANDOM_WEIGHT_STD, "seed": seed}}
    return save_checkpoint(
        Checkpoint(model=model, role="student", label_names=data.label_names,
                   preprocessing=spec, record=record),
        out,
    )
