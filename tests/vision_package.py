"""One tiny exported vision package per test session, shared by the Classify tests.

A real package: the tiny ViT of vit_fixtures trained for two epochs on the synthetic
RGB data (4 classes, 12 px images, the model's input 8 px), exported by the project's
exporter with its onnxruntime-vs-torch verification. Built in the session's temporary
folder the first time a test asks for it (about 10 s, mostly importing torch).

`heavy_vision_package` is the same recipe at vit_fixtures.HEAVY's shape (56 px input,
one epoch), for tests that need a model whose batches cost tens of milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

N_CLASSES = 4


def tiny_vision_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _vision_package(tmp_path_factory, "tiny")


def heavy_vision_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _vision_package(tmp_path_factory, "heavy")


def _vision_package(tmp_path_factory: pytest.TempPathFactory, shape: str) -> Path:
    root = tmp_path_factory.getbasetemp() / f"{shape}-vision-package"
    package = root / "pkg"
    if (package / "manifest.json").is_file():
        return package
    pytest.importorskip("torch", reason="building the test's vision package needs torch")
    from vit_fixtures import HEAVY, make_tiny_vit_checkpoint, write_synthetic_npz

    from exporter.vit.onnx_export import ExportOptions, export_vit

    root.mkdir(parents=True, exist_ok=True)
    npz = write_synthetic_npz(root / "synth-rgb.npz", n_classes=N_CLASSES, channels=3)
    heavy = shape == "heavy"
    checkpoint = make_tiny_vit_checkpoint(root / "ckpt", npz, ternary="ffn",
                                          epochs=1 if heavy else 2,
                                          shape=HEAVY if heavy else None)
    export_vit(checkpoint, package, ExportOptions(name=f"{shape}-vision", data=str(npz)))
    return package
