"""Export a trained ViT checkpoint to a vision model package (ONNX, 2-bit ternary layers).

Ternary layers become com.microsoft::MatMulNBits nodes (bits=2) behind an explicit
per-token int8 activation quantisation; everything else is fp32. The export checks
itself on the test split of the training data (or --data): onnxruntime's logits must
match PyTorch's quantised forward within a tolerance of one int8 step of the logit
scale, and the top-1 class must agree on every image; otherwise nothing is written.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory from train vit")
    parser.add_argument("--out", required=True, help="package directory to write")
    parser.add_argument("--name", help="package name (default: the checkpoint directory name)")
    parser.add_argument("--data", help="npz to verify on (default: the checkpoint's data)")
    parser.add_argument("--accuracy-level", type=int, default=0, choices=(0, 1, 2, 3, 4),
                        help="MatMulNBits accuracy_level stored in the graph (default 0: "
                             "fp32 arithmetic, exact; 4: ORT requantises activations "
                             "per block, exact only when a block spans the whole row)")
    parser.add_argument("--block-size", type=int, default=128,
                        help="largest MatMulNBits block (power of two >= 16; default 128); "
                             "rows shorter than it use one block")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check")


def run(args: argparse.Namespace) -> int:
    import json

    from exporter.vit.onnx_export import ExportOptions, export_vit

    result = export_vit(
        args.model, args.out,
        ExportOptions(name=args.name, max_block_size=args.block_size,
                      accuracy_level=args.accuracy_level, data=args.data,
                      verify=not args.no_verify),
    )
    m = result.manifest
    print(f"wrote {result.package}: {m['parameters']:,} parameters, "
          f"{m['weights']['total_bytes']:,} weight bytes (ternary {m['quantization']['ternary']})")
    if m["verification"]:
        v = m["verification"]
        print(f"verified on {v['images']} test images: top-1 agreement "
              f"{v['top1_agreement']:.3f}, max |logit diff| {v['max_abs_logit_diff']:.2e} "
              f"(tolerance {v['tolerance']:.2e})")
        print(json.dumps({"package_metrics": v["package_metrics"]}))
    return 0
