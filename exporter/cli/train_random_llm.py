"""Write a random-weight LLM checkpoint of a real model's shape, for speed benchmarks.

Decode and prefill speed do not depend on what the weights learned, so a model of
SmolLM2-135M's shape with random weights measures what the trained one would, without
a model hub. The checkpoint (and a small byte-level BPE tokenizer) exports with
`e2edge export llm` like any other.

example:
  e2edge train random-llm --shape smollm2-135m --out artifacts/smollm2-random
"""

from __future__ import annotations

import argparse
from pathlib import Path

from exporter.llm.random_checkpoint import SHAPES  # torch-free: the shapes are plain data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True,
                        help="the real model whose shape the checkpoint takes")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")


def run(args: argparse.Namespace) -> int:
    from exporter.llm.random_checkpoint import make_random_checkpoint

    print(make_random_checkpoint(args.shape, args.out, args.seed))
    return 0
