"""Export a ViT checkpoint to a vision model package, verified against PyTorch.

Package: model.onnx (onnx_graph.py), labels.json, and a manifest with the
preprocessing, IO, architecture, quantisation facts, bytes per part, the
checkpoint's metrics and the verification result.

Verification runs onnxruntime (the package as stored, MatMulNBits and all) and the
PyTorch model's inference-mode forward on every image of the test split, and fails
unless both hold:

  * top-1 agrees on every image;
  * max |logit difference| <= tolerance. Full-precision graphs differ from PyTorch
    only by fp32 summation order, a few ulps of the logits: tolerance 1e-4 + 1e-5 *
    max|logit|. Ternary graphs also quantise activations per token, and a value
    x / step that lands within fp32 noise of a .5 boundary (its x differs by an ulp
    after a differently ordered sum upstream) may round one way in PyTorch and the
    other in ORT: one int8 step, 1/127 of that token's largest activation, on one of
    K inputs. Such flips are rare and each moves the logits by a fraction of one
    int8 step of their own scale, so the tolerance is one int8 step of the logit
    scale: 1e-4 + max|logit| / 127. A real export bug (a wrong scale, transposed
    weights, a wrong zero point) moves logits by far more.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from exporter.errors import ExportVerificationError
from exporter.package_writer import PackageWriter
from exporter.vit.checkpoint import WEIGHTS_NAME, Checkpoint, load_checkpoint
from exporter.vit.medmnist import batches, load_medmnist, resolve_npz
from exporter.vit.metrics import classification_metrics
from exporter.vit.onnx_graph import INPUT_NAME, OUTPUT_NAME, build_vit_onnx
from exporter.vit.ternary import ACT_LEVELS
from runtime.numerics import softmax
from runtime.vision.preprocess import Preprocessing

log = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
LABELS_NAME = "labels.json"


@dataclass(frozen=True)
class ExportOptions:
    name: str | None = None
    max_block_size: int = 128
    accuracy_level: int = 0
    data: str | None = None  # npz for verification; default: the checkpoint's training data
    verify: bool = True
    verify_batch_size: int = 64


@dataclass
class ExportResult:
    package: Path
    manifest: dict[str, Any]


def tolerance(logit_scale: float, ternary: bool) -> float:
    """Allowed max |logit difference| vs PyTorch (see the module docstring)."""
    return 1e-4 + logit_scale * (1.0 / ACT_LEVELS if ternary else 1e-5)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_against_torch(
    onnx_bytes: bytes, checkpoint: Checkpoint, data_path: Path, batch_size: int = 64,
) -> dict[str, Any]:
    """Run ORT and PyTorch on the test split; raise ExportVerificationError on mismatch."""
    data = load_medmnist(data_path)
    model = checkpoint.model.eval()
    if data.n_classes != model.config.n_classes:
        raise ExportVerificationError(
            f"{data_path}: has {data.n_classes} classes, the model {model.config.n_classes}"
        )
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    ort_logits, torch_logits = [], []
    split = data.splits["test"]
    for pixels, _ in batches(split, checkpoint.preprocessing, batch_size):
        ort_logits.append(session.run([OUTPUT_NAME], {INPUT_NAME: pixels})[0])
        with torch.no_grad():
            torch_logits.append(model(torch.from_numpy(pixels)).numpy())
    ours, ref = np.concatenate(ort_logits), np.concatenate(torch_logits)
    ternary = model.config.ternary != "none"
    diff = np.abs(ours - ref)
    tol = tolerance(float(np.abs(ref).max()), ternary)
    disagree = np.flatnonzero(ours.argmax(1) != ref.argmax(1))
    result = {
        "split": "test",
        "images": int(len(ref)),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "tolerance": tol,
        "top1_agreement": float(1.0 - len(disagree) / len(ref)),
    }
    if len(disagree):
        raise ExportVerificationError(
            f"top-1 differs from PyTorch on {len(disagree)} of {len(ref)} test images "
            f"(first: {disagree[:5].tolist()}); max |logit diff| {diff.max():.3g}"
        )
    if diff.max() > tol:
        raise ExportVerificationError(
            f"max |logit diff| vs PyTorch {diff.max():.3g} exceeds the tolerance {tol:.3g}"
        )
    result["package_metrics"] = classification_metrics(softmax(ours), split.labels)
    return result


def _manifest(
    checkpoint: Checkpoint, ckpt_dir: Path, name: str, facts, options: ExportOptions,
    verification: dict[str, Any] | None,
) -> dict[str, Any]:
    cfg = checkpoint.config
    spec: Preprocessing = checkpoint.preprocessing
    total = sum(facts.bytes_by_part.values())
    return {
        "kind": "vision",
        "name": name,
        "source": {
            "checkpoint": str(ckpt_dir),
            "sha256": _sha256(ckpt_dir / WEIGHTS_NAME),
            "role": checkpoint.role,
            "data": checkpoint.record.get("data"),
        },
        "io": {
            "inputs": {INPUT_NAME: {"dtype": "float32",
                                    "shape": ["batch", cfg.channels, cfg.image_size,
                                              cfg.image_size]}},
            "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": ["batch", cfg.n_classes]}},
        },
        "preprocessing": spec.to_dict(),
        "labels": LABELS_NAME,
        "n_classes": cfg.n_classes,
        "architecture": {"family": "bitmed-vit", **cfg.to_dict()},
        "quantization": {
            "ternary": cfg.ternary,
            "weights": "ternary {-1,0,+1} x per-tensor absmean scale, 2 bits packed "
                       "(com.microsoft::MatMulNBits bits=2)",
            "activations": "int8 per token (absmax), explicit ops before each ternary layer",
            "accuracy_level": options.accuracy_level,
            "max_block_size": options.max_block_size,
            "layers": facts.ternary_layers,
        },
        "parameters": facts.parameters,
        "weights": {
            "bytes_by_part": facts.bytes_by_part,
            "total_bytes": total,
            "ternary_bytes": facts.ternary_bytes,
            "full_precision_bytes": total - facts.ternary_bytes,
        },
        "metrics": checkpoint.record.get("metrics", {}),
        "verification": verification,
    }


def export_vit(checkpoint_dir: str | Path, out: str | Path, options: ExportOptions) -> ExportResult:
    ckpt_dir = Path(checkpoint_dir).expanduser().resolve()
    checkpoint = load_checkpoint(ckpt_dir)
    onnx_model, facts = build_vit_onnx(
        checkpoint.model, options.max_block_size, options.accuracy_level
    )
    onnx_bytes = onnx_model.SerializeToString()
    verification = None
    if options.verify:
        data_name = options.data or checkpoint.record.get("data_path") or checkpoint.record.get(
            "data"
        )
        if not data_name:
            raise ValueError("no data to verify against: pass --data NPZ (or --no-verify)")
        verification = verify_against_torch(
            onnx_bytes, checkpoint, resolve_npz(data_name), options.verify_batch_size
        )
        log.info("verified: %s", verification)
    name = options.name or ckpt_dir.name
    manifest = _manifest(checkpoint, ckpt_dir, name, facts, options, verification)
    with PackageWriter(out) as writer:
        onnx.save_model(onnx_model, str(writer.dir / ONNX_NAME))
        (writer.dir / LABELS_NAME).write_text(json.dumps(checkpoint.label_names, indent=1) + "\n")
        package = writer.commit(manifest)
    return ExportResult(package=package, manifest=manifest)
