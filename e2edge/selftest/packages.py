"""The packages the selftest runs: built here by the project's own exporter, or taken
from a directory of packages built elsewhere (a Jetson that has only the runtime).

Built: one tiny random-weight LLaMA (exporter/llm/random_checkpoint.py, shape "tiny")
exported in both attention forms, with int4 and fp32 weights, and one tiny ternary ViT
of random weights (exporter/vit/tiny.py), each verified against PyTorch by its exporter
as `e2edge export` does. No downloads, no dataset: the ViT's verification images are
synthetic. Building needs torch and transformers; where they are missing the reason is
returned, not raised, so the selftest can say so and go on.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ConfigError
from runtime.package import MANIFEST_NAME

# (attention, weights) of the LLM packages built: gqa + int4 is `e2edge export llm`'s
# default; standard + fp32 is the one TensorRT's parser reads
LLM_VARIANTS = (("gqa", "int4"), ("gqa", "fp32"), ("standard", "int4"), ("standard", "fp32"))
VISION_NAME = "vit-ternary"
EXPORTER_MODULES = ("torch", "transformers", "onnx", "safetensors", "tokenizers")


@dataclass(frozen=True)
class Packages:
    """Where the packages come from, and the package directories (none when absent)."""

    source: str  # "built" | the --packages directory
    paths: tuple[Path, ...] = ()
    absent: str | None = None  # why there are none: the exporter cannot run here
    failed: str | None = None  # why there are none: an export disagreed with PyTorch
    seconds: float | None = None  # building them took

    def to_dict(self) -> dict:
        row = {"source": self.source, "paths": [str(p) for p in self.paths]}
        for field in ("absent", "failed"):
            if getattr(self, field) is not None:
                row[field] = getattr(self, field)
        if self.seconds is not None:
            row["build_seconds"] = round(self.seconds, 1)
        return row


def find_packages(root: Path) -> Packages:
    """The package directories in `root` (or `root` itself when it is one).

    A directory with a manifest.json counts, readable or not: a broken package is the
    selftest's to report in its row."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--packages {root}: no such directory")
    if (root / MANIFEST_NAME).is_file():
        return Packages(str(root), (root,))
    found = tuple(sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}")))
    if not found:
        raise ConfigError(f"--packages {root}: holds no model package (no */{MANIFEST_NAME})")
    return Packages(str(root), found)


def build_packages(out: Path) -> Packages:
    """Build the tiny packages into `out`; Packages.absent says why when the exporter's
    libraries are missing."""
    try:
        import torch  # noqa: F401 - the exporter's first need; checked before any work
        import transformers  # noqa: F401
    except ModuleNotFoundError as e:
        return Packages("built", absent=_no_exporter(e))
    from exporter.errors import ExportVerificationError

    started = time.perf_counter()
    try:
        paths = (*_build_llm_packages(out), _build_vision_package(out))
    except ModuleNotFoundError as e:
        if e.name not in EXPORTER_MODULES:
            raise
        return Packages("built", absent=_no_exporter(e))
    except ExportVerificationError as e:  # a wrong result before any backend ran
        return Packages("built", failed=f"export: {e}")
    return Packages("built", paths, seconds=time.perf_counter() - started)


def _no_exporter(e: ModuleNotFoundError) -> str:
    return (f"the exporter needs torch and transformers to build the test packages "
            f"({e.name} is not installed); build them on a workstation with "
            "`e2edge selftest --out DIR` and run `e2edge selftest --packages DIR/packages` "
            "here")


def _build_llm_packages(out: Path) -> list[Path]:
    from transformers.utils import logging as hf_logging

    from exporter.llm.export import LLMExportOptions, default_accuracy_level, export_llm
    from exporter.llm.random_checkpoint import make_random_checkpoint

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar is noise here
    with tempfile.TemporaryDirectory(prefix="e2edge-selftest-") as tmp:
        checkpoint = make_random_checkpoint("tiny", Path(tmp) / "tiny-llm")
        paths = []
        for attention, weights in LLM_VARIANTS:
            name = f"llm-{attention}-{weights}"
            options = LLMExportOptions(name=name, attention=attention, weights=weights,
                                       accuracy_level=default_accuracy_level(weights))
            paths.append(export_llm(checkpoint, out / name, options).package)
    return paths


def _build_vision_package(out: Path) -> Path:
    from exporter.vit.onnx_export import ExportOptions, export_vit
    from exporter.vit.tiny import make_random_vit_checkpoint, write_synthetic_npz

    with tempfile.TemporaryDirectory(prefix="e2edge-selftest-") as tmp:
        npz = write_synthetic_npz(Path(tmp) / "synthetic.npz", n_classes=4, channels=3,
                                  counts=(8, 8, 32))
        checkpoint = make_random_vit_checkpoint(Path(tmp) / "tiny-vit", npz)
        return export_vit(checkpoint, out / VISION_NAME, ExportOptions(name=VISION_NAME)).package
