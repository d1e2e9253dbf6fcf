"""The acceptance test for a new box: tiny LLM and ternary-ViT packages run on every
backend this box has, each checked against onnxruntime CPU, and one JSON report.

    e2edge selftest [--json] [--out DIR] [--packages DIR] [--require gpu|tensorrt]

Builds the packages with the project's own exporter (needs torch; no downloads), or
takes packages built elsewhere with --packages (a Jetson that has only the runtime).
Backends: onnxruntime CPU (the reference), onnxruntime CUDA, and a TensorRT engine
built here with the e2edge plugins. LLMs: logits over a prompt and 16 decode steps
within a tolerance, 16 greedy tokens equal (up to a near tie); ViT: class
probabilities within a tolerance, top-1 equal; each timed. Where a GPU is present,
the kernel cases of `e2edge bench kernels` run too. A backend this box lacks, or one
that does not take a package, is "absent" with the reason. --out DIR writes
DIR/selftest.json and keeps the packages in DIR/packages. Exit status 1 when a backend
ran and disagreed (or broke), or --require names what is missing here; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REQUIREMENTS = ("gpu", "tensorrt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the JSON report")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write DIR/selftest.json and keep the built packages in "
                             "DIR/packages")
    parser.add_argument("--packages", type=Path, metavar="DIR",
                        help="run these packages (DIR/*/manifest.json) instead of building")
    parser.add_argument("--require", choices=REQUIREMENTS, action="append", default=[],
                        help="fail unless this box has it: gpu (a GPU backend: onnxruntime "
                             "CUDA or TensorRT) or tensorrt; may be repeated")


def run(args: argparse.Namespace) -> int:
    from runtime import host_facts
    from runtime.backends.selection import BackendHost

    facts = host_facts.collect()
    host = BackendHost.from_facts(facts)
    for requirement in args.require:
        require(requirement, host)
    from e2edge.selftest.suite import selftest

    report = selftest(facts, host, args.out, args.packages)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "selftest.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from e2edge.selftest.report import format_report

        print(format_report(report))
        if args.out is not None:
            print(f"report: {args.out / 'selftest.json'}")
    return 1 if report["summary"]["result"] == "failed" else 0


def require(requirement: str, host) -> None:
    """Raise BackendUnavailable (the CLI's one line) when this box lacks `requirement`."""
    from e2edge.selftest.backends import box_missing
    from runtime.errors import BackendUnavailable

    tensorrt = box_missing("tensorrt", host)
    if requirement == "tensorrt" and tensorrt is not None:
        raise BackendUnavailable(f"--require tensorrt: {tensorrt}")
    cuda = box_missing("onnxruntime-cuda", host)
    if requirement == "gpu" and cuda is not None and tensorrt is not None:
        raise BackendUnavailable(f"--require gpu: no GPU backend here: onnxruntime CUDA: "
                                 f"{cuda}; TensorRT: {tensorrt}")
