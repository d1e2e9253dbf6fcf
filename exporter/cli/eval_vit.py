"""Accuracy and AUC of a ViT checkpoint (PyTorch) or vision package (onnxruntime).

  e2edge eval vit --model artifacts/vit/retina-student --data retinamnist.npz
  e2edge eval vit --package artifacts/vit/pkg/retina-student-all --data retinamnist.npz
  e2edge eval vit --model T0 --model T1 --model T2      (a teacher ensemble: mean logits)

AUC is one-vs-rest (macro mean) for multi-class data, of the positive class for
binary data. Packages run through the runtime's VisionEngine on raw uint8 images
(its own preprocessing), checkpoints through the training code's data path.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", action="append",
                        help="checkpoint directory from train vit; repeat it to score the "
                             "checkpoints' mean logits (a teacher ensemble)")
    source.add_argument("--package", help="vision package directory from export vit")
    parser.add_argument("--data", help="MedMNIST-style npz (default: the one it was trained on)")
    parser.add_argument("--split", choices=("val", "test", "both"), default="both",
                        help="which split(s) of the data to score")
    parser.add_argument("--execution", default="auto",
                        help="package execution mode: auto | packed | fp32 | int8")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--out", help="also write the JSON result to this file")


def _data_name(args: argparse.Namespace, record: dict) -> str:
    name = args.data or record.get("data_path") or record.get("data")
    if not name:
        raise ValueError("no data to evaluate on: pass --data NPZ")
    return name


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from exporter.vit.medmnist import load_medmnist, resolve_npz
    from exporter.vit.metrics import classification_metrics

    splits = ("val", "test") if args.split == "both" else (args.split,)
    result: dict = {}
    if args.package:
        from runtime.vision.engine import VisionEngine

        engine = VisionEngine(args.package, execution=args.execution)
        source = engine.package.manifest.get("source", {})
        data = load_medmnist(resolve_npz(_data_name(args, {"data": source.get("data")})))
        for split in splits:
            images = data.splits[split].images
            probs = np.concatenate([
                engine.probabilities(images[i:i + args.batch_size])
                for i in range(0, len(images), args.batch_size)
            ])
            result[split] = classification_metrics(probs, data.splits[split].labels)
        result.update(package=str(Path(args.package)), execution=engine.execution)
    else:
        from exporter.vit.checkpoint import load_checkpoint, load_matching_checkpoint
        from exporter.vit.distill import TeacherEnsemble
        from exporter.vit.training import evaluate

        ckpt = load_checkpoint(args.model[0])
        checkpoints = [ckpt] + [  # the others must fit the first to join its ensemble
            load_matching_checkpoint(path, ckpt.config.n_classes, ckpt.preprocessing,
                                     "--model", args.model[0])
            for path in args.model[1:]
        ]
        model = TeacherEnsemble([c.model for c in checkpoints]) if len(checkpoints) > 1 \
            else ckpt.model
        data = load_medmnist(resolve_npz(_data_name(args, ckpt.record)))
        for split in splits:
            result[split] = evaluate(model, data.splits[split], ckpt.preprocessing,
                                     args.batch_size)
        if len(checkpoints) == 1:
            result.update(model=str(Path(args.model[0])), role=ckpt.role,
                          ternary=ckpt.config.ternary)
        else:
            result.update(models=[str(Path(p)) for p in args.model], ensemble="mean logits")
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
