"""Sliding-window perplexity of a checkpoint (PyTorch) or a package (onnxruntime) on a text.

Windows of --window tokens advance by --stride; each scores only the tokens no earlier
window scored (Hugging Face style). A checkpoint and its package give the same number.
The text is a path, a data-file name, or a slice FILE@A:B of its characters.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint or package directory")
    parser.add_argument("--text", required=True, help="text file (path, name, or FILE@A:B)")
    parser.add_argument("--window", type=int, help="tokens per window (default: the model's "
                        "context, at most 1024)")
    parser.add_argument("--stride", type=int, help="tokens a window advances (default: half)")
    parser.add_argument("--max-tokens", type=int, help="score only the first N tokens")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: auto)")
    parser.add_argument("--json", help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from exporter.llm.evaluation import open_scorer, text_perplexity
    from exporter.text import read_text

    scorer = open_scorer(args.model, threads=args.threads)
    result = text_perplexity(scorer, read_text(args.text), args.window, args.stride,
                             args.max_tokens)
    print(f"perplexity {result.perplexity:.4f} ({result.mean_nll:.4f} nats/token) over "
          f"{result.tokens} tokens, {result.windows} windows of {result.window} "
          f"(stride {result.stride})")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model": args.model, "text": args.text, **asdict(result)}, indent=2) + "\n")
    return 0
