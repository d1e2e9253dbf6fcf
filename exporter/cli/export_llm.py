"""Export a Hugging Face decoder checkpoint to an llm model package (ONNX + KV cache).

The export checks itself: onnxruntime's logits must match PyTorch's within
--tolerance on a sample prompt, and 32 greedy tokens from the package must equal
transformers' generate; otherwise it fails and writes nothing. For fp16/int8/int4
weights, PyTorch runs the checkpoint with the package's rounded weights (and, at
accuracy level 4, with its linears' inputs on the same int8 grid).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from exporter.llm.weight_quant import WEIGHT_FORMATS  # numpy only: the CLI stays quick

    parser.add_argument("--model", required=True, help="checkpoint directory (config.json, "
                        "model.safetensors, tokenizer files)")
    parser.add_argument("--out", required=True, help="package directory to write")
    parser.add_argument("--name", help="package name (default: the checkpoint directory name)")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity checks")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="max |logit difference| vs PyTorch with the package's weights "
                             "(rounded to fp16 or dequantised; default 1e-4)")
    parser.add_argument("--verify-tokens", type=int, default=32,
                        help="greedy tokens compared with transformers generate (default 32)")
    parser.add_argument("--weights", choices=WEIGHT_FORMATS, default="int4",
                        help="weight precision (default int4, the CPU deployment format: "
                             "about 0.3 %% perplexity for a third of the bytes); int8/int4 use "
                             "MatMulNBits blockwise quantisation (onnxruntime); fp16 stores the "
                             "weight matrices in half precision, widened to fp32 by Cast nodes "
                             "(half the file; onnxruntime's CPU provider folds the Casts at "
                             "load, so it decodes at fp32 speed; TensorRT builds fp16 engines "
                             "from it); fp32 or fp16 with --attention standard for TensorRT")
    parser.add_argument("--block-size", type=int, default=32,
                        help="int8/int4 quantisation block along K (power of two >= 16)")
    parser.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4],
                        help="int8/int4 only: MatMulNBits accuracy level; 4 (their default, "
                             "as onnxruntime-genai's builder picks for CPU) quantises "
                             "activations to int8 per block, about 1.4x faster decode on CPU "
                             "at the same perplexity; 0 computes in fp32")
    parser.add_argument("--attention", choices=["gqa", "standard"], default="gqa",
                        help="gqa (default): onnxruntime's fused GroupQueryAttention over a "
                             "shared KV buffer, fastest on onnxruntime and needed for "
                             "continuous batching; standard: plain ONNX ops that TensorRT's "
                             "parser also reads (use it for build-engine)")


def run(args: argparse.Namespace) -> int:
    import time

    from exporter.llm.export import LLMExportOptions, default_accuracy_level, export_llm
    from exporter.memory import peak_rss_mib

    started = time.monotonic()
    result = export_llm(
        args.model,
        args.out,
        LLMExportOptions(
            name=args.name,
            verify=not args.no_verify,
            logits_tolerance=args.tolerance,
            verify_tokens=args.verify_tokens,
            weights=args.weights,
            block_size=args.block_size,
            accuracy_level=(args.accuracy_level if args.accuracy_level is not None
                            else default_accuracy_level(args.weights)),
            attention=args.attention,
        ),
    )
    print(f"wrote {result.package} ({result.parameters:,} parameters, "
          f"{result.weight_bytes / 1e6:.1f} MB of weights)")
    if result.max_logit_diff is not None:
        tokens = {
            True: "greedy tokens match transformers generate",
            False: "greedy tokens match transformers generate up to a near tie",
            None: "greedy tokens not compared (accuracy levels 1-3 are not emulated)",
        }[result.greedy_tokens_match]
        print(f"verified: max |logit diff| vs PyTorch {result.max_logit_diff:.2e}, {tokens}")
    print(f"took {time.monotonic() - started:.0f} s, peak memory {peak_rss_mib():.0f} MiB")
    return 0
