"""Tiny ViT fixtures: a synthetic MedMNIST-style npz and a briefly trained checkpoint
(exporter/vit/tiny.py makes both; here the tiny ViT is trained for a few epochs)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from exporter.vit.tiny import TINY, tiny_vit, write_synthetic_npz

__all__ = ["HEAVY", "TINY", "make_tiny_vit_checkpoint", "one_torch_thread",
           "write_synthetic_npz"]

# The `mnist28` preset's blocks at 56 px (196 tokens): a batch of a few images costs tens
# of milliseconds on a CPU core, so in a test daemon the model, not its clients' Python,
# bounds how fast it serves (what the box-wide scheduler's tests need to see).
HEAVY = dict(image_size=56, patch_size=4, width=128, depth=3, n_heads=8, ffn_width=512)


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
    from exporter.vit.checkpoint import Checkpoint, save_checkpoint
    from exporter.vit.config import ViTRecipe
    from exporter.vit.training import train

    model, spec, data = tiny_vit(npz, role, ternary, seed, shape)
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
