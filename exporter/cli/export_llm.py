"""Export a Hugging Face LLaMA/Gemma checkpoint to an llm model package (ONNX + KV cache).

The export checks itself: onnxruntime's logits must match PyTorch's within
--tolerance on a sample prompt, and 32 greedy tokens from the package must equal
transformers' generate; otherwise it fails and writes nothing.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, "
                        "model.safetensors, tokenizer files)")
    parser.add_argument("--out", required=True, help="package directory to write")
    parser.add_argument("--name", help="package name (default: the checkpoint directory name)")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity checks")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max |logit difference| vs PyTorch (default 1e-4, fp32)")
    parser.add_argument("--verify-tokens", type=int, default=32,
                        help="greedy tokens compared with transformers generate (default 32)")


def run(args: argparse.Namespace) -> int:
    from exporter.llm_export import LLMExportOptions, export_llm

    result = export_llm(
        args.model,
        args.out,
        LLMExportOptions(
            name=args.name,
            verify=not args.no_verify,
            logits_tolerance=args.tolerance,
            verify_tokens=args.verify_tokens,
        ),
    )
    print(f"wrote {result.package} ({result.parameters:,} parameters, "
          f"{result.weight_bytes / 1e6:.1f} MB of weights)")
    if result.max_logit_diff is not None:
        print(f"verified: max |logit diff| vs PyTorch {result.max_logit_diff:.2e}, "
              f"greedy tokens match transformers generate")
    return 0
