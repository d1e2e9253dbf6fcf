"""Build a TensorRT engine for a model package on this GPU.

MatMulNBits bits=2 nodes run as the e2edge::PackedTernaryMatMul plugin over the package's
own bytes; --sparse-ffn also turns gated FFN blocks into e2edge::SparseFFN with an
`ffn_keep` input. The engine lands in PKG/engines/<gpu>-sm<cc>-trt<version>.plan with a
JSON sidecar. Needs TensorRT 10 (>= 10.0, < 11), cuda-python and an NVIDIA GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", type=Path, help="model package directory")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                        help="fp16 lets TensorRT pick half-precision kernels; fp32 keeps "
                             "every layer in full precision")
    parser.add_argument(
        "--timing-cache",
        type=Path,
        metavar="FILE",
        help="TensorRT timing cache to read and update (faster rebuilds)",
    )
    parser.add_argument("--max-batch", type=int, default=1, metavar="N",
                        help="largest batch the engine accepts (vision: images per run)")
    parser.add_argument(
        "--max-seq",
        type=int,
        default=512,
        metavar="N",
        help="longest context (prompt + generated tokens) the engine accepts",
    )
    parser.add_argument(
        "--sparse-ffn",
        action="store_true",
        help="lower gated FFN blocks to the sparse FFN plugin (elastic width)",
    )


def run(args: argparse.Namespace) -> int:
    from plugins_trt.engine_builder import BuildOptions, build_engine

    options = BuildOptions(
        precision=args.precision,
        timing_cache=args.timing_cache,
        max_batch=args.max_batch,
        max_seq=args.max_seq,
        sparse_ffn=args.sparse_ffn,
    )
    result = build_engine(args.package, options)
    lowered = result.sidecar["lowering"]
    print(
        f"{result.plan} ({result.plan.stat().st_size / 2**20:.1f} MiB, "
        f"{lowered['packed_ternary_matmul']} ternary matmuls, {lowered['sparse_ffn']} sparse FFNs, "
        f"built in {result.sidecar['build_seconds']} s)"
    )
    return 0
