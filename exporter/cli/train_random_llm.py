"""Write a random-weight LLM checkpoint of a real model's shape, for speed and memory benchmarks.

Decode and prefill speed do not depend on what the weights learned, so a model of
SmolLM2-135M's shape with random weights measures what the trained one would, without
a model hub; one of Llama-3.2-3B's shape measures the memory an export of it takes. The
checkpoint is written as published checkpoints are (bf16, sharded) and exports with
`e2edge export llm` like any other.

example:
  e2edge train random-llm --shape smollm2-135m --out artifacts/smollm2-random
  e2edge train random-llm --shape llama-3.2-3b --out artifacts/llama-3.2-3b-random
"""

from __future__ import annotations

import argparse
from pathlib import Path

from exporter.llm.random_checkpoint import DTYPES, SHAPES  # torch-free: plain data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True,
                        help="the real model whose shape the checkpoint takes")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="stored weight type (default bfloat16, as checkpoints are published)")
    parser.add_argument("--max-shard-size", default="2GB",
                        help="largest safetensors shard (default 2GB; also what writing holds)")


def run(args: argparse.Namespace) -> int:
    from exporter.llm.random_checkpoint import make_random_checkpoint

    print(make_random_checkpoint(args.shape, args.out, args.seed, args.dtype,
                                 args.max_shard_size))
    return 0
