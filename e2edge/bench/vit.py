"""Benchmark a vision package's latency on onnxruntime CPU, optionally against another.

Batch sizes 1 and 16 (--batch-sizes), on preprocessed random images, so the model is
what is timed. Every configuration (package x execution mode x batch size) is warmed
up, then the configurations are timed in interleaved rounds, one run each per round,
so a machine that gets busier mid-benchmark slows them all alike; each reports the
median over --repeats rounds. With --compare PKG (say the fp32 student) both packages
run in the same process and the JSON carries compare / package latency ratios
(> 1: the package is faster) and the weight-byte ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from e2edge.bench.result_file import save_result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", required=True, help="vision package to benchmark")
    parser.add_argument("--compare", metavar="PKG", help="a second package, e.g. the fp32 one")
    parser.add_argument("--execution", default="auto",
                        help="auto | packed | fp32 | int8 | all (every mode, for ternary "
                             "packages; default auto, what VisionEngine uses)")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated (default 1,16)")
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per configuration")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads of every configuration; 0 = this "
                             "machine's cores (the JSON records the number)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", help="also write the JSON to this file")


def _modes(path: str, execution: str) -> list[str]:
    from runtime.package import load_package

    package = load_package(path)
    ternary = package.manifest.get("quantization", {}).get("ternary", "none") != "none"
    if not ternary:
        return ["fp32"]
    return ["packed", "fp32", "int8"] if execution == "all" else [execution]


def bench(args: argparse.Namespace) -> dict:
    import numpy as np

    from runtime.host_facts import machine_facts
    from runtime.vision.engine import EXECUTIONS, VisionEngine

    if args.execution not in (*EXECUTIONS, "all"):
        raise ValueError(f"--execution must be one of {EXECUTIONS + ('all',)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if min(batch_sizes) < 1 or args.repeats < 1:
        raise ValueError("batch sizes and --repeats must be >= 1")
    threads = args.threads or os.cpu_count() or 1  # every configuration the same, recorded
    paths = [args.package] + ([args.compare] if args.compare else [])
    configs = []  # (package path, mode, batch, engine, pixels)
    packages: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    for path in paths:
        key = str(Path(path))
        for mode in _modes(path, args.execution):
            engine = VisionEngine(path, execution=mode, threads=threads)
            m = engine.package.manifest
            packages.setdefault(key, {
                "name": m["name"],
                "ternary": m.get("quantization", {}).get("ternary", "none"),
                "weight_bytes": m["weights"]["total_bytes"],
                "onnx_bytes": engine.package.onnx_path.stat().st_size,
                "latency_ms": {},
            })
            spec = engine.preprocessing
            for batch in batch_sizes:
                images = rng.integers(0, 256, (batch, spec.size, spec.size, spec.channels),
                                      dtype=np.uint8)
                configs.append((key, engine.execution, batch, engine, engine.preprocess(images)))
    for *_, engine, pixels in configs:
        for _ in range(args.warmup):
            engine.logits(pixels)
    times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    for _ in range(args.repeats):
        for i, (*_, engine, pixels) in enumerate(configs):
            start = time.perf_counter()
            engine.logits(pixels)
            times[i].append(time.perf_counter() - start)
    for i, (key, mode, batch, _, _) in enumerate(configs):
        latency = packages[key]["latency_ms"].setdefault(mode, {})
        latency[f"batch_{batch}"] = round(statistics.median(times[i]) * 1e3, 4)
    result = {
        "benchmark": "vit",
        "machine": machine_facts(),
        "onnxruntime_threads": threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "packages": packages,
    }
    if args.compare:
        ours, theirs = packages[str(Path(args.package))], packages[str(Path(args.compare))]
        their_ms = next(iter(theirs["latency_ms"].values()))
        result["compare"] = {
            "weight_bytes_ratio": round(theirs["weight_bytes"] / ours["weight_bytes"], 3),
            "speedup": {  # compare's latency / package's: > 1 means the package is faster
                mode: {b: round(their_ms[b] / ms, 3) for b, ms in lat.items()}
                for mode, lat in ours["latency_ms"].items()
            },
        }
    return result


def run(args: argparse.Namespace) -> int:
    result = bench(args)
    text = save_result(result, args.out)
    if args.json:
        print(text)
    else:
        for p in result["packages"].values():
            for mode, lat in p["latency_ms"].items():
                cells = ", ".join(f"{b.replace('_', ' ')}: {ms:.3f} ms" for b, ms in lat.items())
                print(f"{p['name']} [{mode}] {cells}  ({p['weight_bytes']:,} weight bytes)",
                      file=sys.stdout)
        if "compare" in result:
            print(f"speedup vs --compare: {result['compare']['speedup']}, weight bytes ratio "
                  f"{result['compare']['weight_bytes_ratio']}")
    return 0
