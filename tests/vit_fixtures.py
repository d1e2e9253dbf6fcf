"""Tiny ViT fixtures: a synthetic MedMNIST-style npz and a briefly trained checkpoint.

The synthetic classes are learnable in a few steps: class c brightens the image by
c steps over noise and adds a bright square in a class-dependent corner, so a
trained model must read the pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TINY = dict(image_size=8, patch_size=2, width=32, depth=1, n_heads=4, ffn_width=64)
# The `mnist28` preset's blocks at 56 px (196 tokens): a batch of a few images costs tens
# of milliseconds on a CPU core, so in a test daemon the model, not its clients' Python,
# bounds how fast it serves (what the box-wide scheduler's tests need to see).
HEAVY = dict(image_size=56, patch_size=4, width=128, depth=3, n_heads=8, ffn_width=512)


def write_synthetic_npz(
    path: Path, n_classes: int = 3, channels: int = 1, size: int = 12,
    counts: tuple[int, int, int] = (96, 24, 32), seed: int = 0, flat_labels: bool = False,
) -> Path:
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


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and do not fight other test workers."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_tiny_vit_checkpoint(
    out: Path, npz: Path, role: str = "student", ternary: str = "ffn", epochs: int = 3,
    seed: int = 0, shape: dict | None = None,
) -> Path:
    """Train a tiny ViT (or one of `shape`) for a few epochs on `npz`; save the checkpoint."""
    import torch

    from exporter.vit.checkpoint import Checkpoint, save_checkpoint
    from exporter.vit.config import ViTConfig, ViTRecipe
    from exporter.vit.medmnist import load_medmnist
    from exporter.vit.model import ViT
    from exporter.vit.training import train
    from runtime.vision.preprocess import Preprocessing

    data = load_medmnist(npz)
    config = ViTConfig(**(shape or TINY)).for_data(data.n_classes, data.channels)
    config = config.for_role(role, ternary)
    mean, std = data.normalisation(config.channels)
    spec = Preprocessing(size=config.image_size, channels=config.channels, mean=mean, std=std)
    torch.manual_seed(seed)
    model = ViT(config)
    recipe = ViTRecipe(epochs=epochs, batch_size=32, lr=3e-3, warmup_epochs=0, max_shift=0)
    with one_torch_thread():
        result = train(model, data, spec, recipe, seed=seed)
    record = {"data": npz.name, "data_path": str(npz), "recipe": dataclasses.asdict(recipe),
              **result.to_dict()}
    return save_checkpoint(
        Checkpoint(model=model, role=role, label_names=data.label_names, preprocessing=spec,
                   record=record),
        out,
    )
