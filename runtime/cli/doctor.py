"""What this box has for e2edge, and with --config what each model will run on and why.

    e2edge doctor [--json] [--config FILE]

CPU, memory, the GPU and its CUDA driver, the Jetson release, onnxruntime and its
execution providers, TensorRT, cuda-python and NVRTC, e2edge's CPU int4 and fp32
kernels, and the power sources, each with the reason when absent (runtime/host_facts.py). With the
daemon's config, every model's package is opened and its backend chosen as
runtime/backends/selection.py decides.
Exit status 1 when the config cannot be read or a configured model cannot run here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the daemon's YAML config: say what each model will run on")


def run(args: argparse.Namespace) -> int:
    import json

    from e2edge import __version__
    from runtime import host_facts
    from runtime.backends.selection import BackendHost
    from runtime.config import load_config

    config = load_config(args.config) if args.config is not None else None
    report: dict[str, Any] = {"e2edge": __version__, **host_facts.collect()}
    if config is not None:
        host = BackendHost.from_facts(report)
        report["config"] = config.source
        report["models"] = [model_backend(model, host) for model in config.models]
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if any("error" in m for m in report.get("models", [])) else 0


def model_backend(model: Any, host: Any) -> dict[str, Any]:
    """One configured model: its package kind, and the backend chosen or why none."""
    from runtime.backends.selection import choose_backend
    from runtime.errors import E2edgeError
    from runtime.package import load_package

    row: dict[str, Any] = {"name": model.name, "path": str(model.path),
                           "configured_backend": model.backend}
    try:
        package = load_package(model.path)
        row["kind"] = package.kind
        choice = choose_backend(model, package, host)
    except E2edgeError as e:
        row["error"] = " ".join(str(e).split())
        return row
    row.update(backend=choice.name, providers=list(choice.providers), reason=choice.reason)
    return row


# ---- the human form ----------------------------------------------------------------------
def _size(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / 2**30:.1f} GiB"


def _absent(section: dict[str, Any]) -> str:
    return f"absent: {section['reason']}"


def _lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    cpu, memory, gpu, jetson = r["cpu"], r["memory"], r["gpu"], r["jetson"]
    l3 = f", L3 {cpu['l3_cache_bytes'] // 2**20} MiB" if cpu["l3_cache_bytes"] else ""
    rows = [
        ("cpu", f"{cpu['model']}, {cpu['cores']} cores, {cpu['architecture']}{l3}"),
        ("memory", f"{_size(memory['total_bytes'])} total, "
                   f"{_size(memory['available_bytes'])} available"),
    ]
    if gpu["present"]:
        cuda = f", CUDA driver API {gpu['cuda_driver_api']}" if "cuda_driver_api" in gpu else ""
        rows.append(("gpu", f"{gpu['name']}, compute capability {gpu['compute_capability']}, "
                            f"{_size(gpu['memory_bytes'])}{cuda} (via {gpu['source']})"))
    else:
        rows.append(("gpu", _absent(gpu)))
    if jetson["is_jetson"]:
        jetpack = f", JetPack {jetson['jetpack']}" if jetson["jetpack"] else ""
        rows.append(("jetson", f"{jetson['model'] or 'yes'}: L4T {jetson['l4t']}{jetpack}"))
    else:
        rows.append(("jetson", f"no ({jetson['reason']})"))
    ort, trt, cuda_python = r["onnxruntime"], r["tensorrt"], r["cuda_python"]
    rows.append(("onnxruntime", f"{ort['version']}: {', '.join(ort['providers'])}"
                 if ort["available"] else _absent(ort)))
    rows.append(("tensorrt", trt["version"] if trt["available"] else _absent(trt)))
    if cuda_python["available"]:
        nvrtc = (f"NVRTC {cuda_python['nvrtc_version']}" if cuda_python["nvrtc_version"]
                 else cuda_python["nvrtc_reason"])
        rows.append(("cuda-python", f"{cuda_python['version']}, {nvrtc}"))
    else:
        rows.append(("cuda-python", _absent(cuda_python)))
    for weights, nodes in (("int4", "int4 MatMulNBits"), ("fp32", "fp32 MatMul")):
        kernel = r[f"{weights}_kernel"]
        rows.append((f"{weights}-kernel", f"{kernel['isa']}: runs {nodes} on the CPU provider"
                     if kernel["available"] else f"not used: {kernel['reason']}"))
    sources = "; ".join(f"{s['name']}: {'found' if s['found'] else s['reason']}"
                        for s in r["power"]["sources"])
    rows.append(("power", f"auto -> {r['power']['auto']} ({sources})"))
    return rows


def format_report(r: dict[str, Any]) -> str:
    lines = [f"e2edge {r['e2edge']} on Python {r['python']}, {r['platform']}"]
    lines += [f"  {label:12} {text}" for label, text in _lines(r)]
    if "models" in r:
        lines.append(f"models in {r['config']}:")
        for m in r["models"]:
            if "error" in m:
                lines.append(f"  {m['name']:12} cannot run here ({m['configured_backend']}): "
                             f"{m['error']}")
                continue
            providers = f" [{', '.join(m['providers'])}]" if m["providers"] else ""
            lines.append(f"  {m['name']:12} {m['kind']:6} -> {m['backend']}{providers}")
            lines.append(f"  {'':12} {m['reason']}")
    return "\n".join(lines)
