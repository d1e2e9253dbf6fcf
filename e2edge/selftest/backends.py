"""The backends a package is tried on, whether this box has each, and what runs it.

    onnxruntime-cpu   the reference: the package as the daemon runs it on the CPU
    onnxruntime-cuda  onnxruntime's CUDA provider (onnxruntime-gpu and a GPU)
    tensorrt          an engine built here by plugins_trt's engine builder (fp16, the
                      e2edge plugins for 2-bit layers), run by the TensorRT backend

What the box has comes from runtime/host_facts.py through BackendHost, and whether a
backend takes a package is runtime/backends/selection.py's choice or the engine
builder's refusal: nothing is probed here. A backend that cannot run a package raises
Absent with the reason; anything else that goes wrong is a failure of that row.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.backends.selection import CPU, CUDA, BackendHost, choose_backend
from runtime.config import ModelConfig
from runtime.errors import BackendUnavailable, PackageError
from runtime.package import ModelPackage, load_package

REFERENCE = "onnxruntime-cpu"
COMPARED = ("onnxruntime-cuda", "tensorrt")  # each against the reference
# The arithmetic each backend runs an fp32 package in, which sets the tolerances:
# onnxruntime's CUDA provider runs fp32 GEMMs in TF32 on Ampere and later (its default),
# the engines are built fp16.
ARITHMETIC = {REFERENCE: "fp32", "onnxruntime-cuda": "tf32", "tensorrt": "fp16"}
ENGINE_MAX_SEQ = 256  # prompt + generated tokens an LLM engine is built for
ENGINE_MAX_BATCH = 16  # images a vision engine takes in one run


class Absent(Exception):
    """This backend cannot run this package here; the message says why."""


@dataclass(frozen=True)
class Placement:
    """How to open a package on a backend: the runtime's backend name and providers."""

    path: Path  # the package, or its copy holding the engine built for this run
    backend: str  # "onnxruntime" | "tensorrt", as LLMEngine and VisionEngine name them
    providers: tuple[str, ...]
    reason: str  # selection.py's words for the choice
    engine_build_s: float | None = None


def box_missing(backend: str, host: BackendHost) -> str | None:
    """Why this box has no `backend` at all; None when it has."""
    if backend == REFERENCE:
        return host.onnxruntime_missing
    if backend == "onnxruntime-cuda":
        return host.onnxruntime_cuda_missing()
    return host.tensorrt_missing


def place(backend: str, package: ModelPackage, host: BackendHost, work: Path) -> Placement:
    """Where and how `package` runs on `backend`; Absent when it cannot run there.

    For tensorrt an engine is built into a copy of the package under `work`, so a
    package given with --packages is never written to."""
    missing = box_missing(backend, host)
    if missing is not None:
        raise Absent(missing)
    if backend == "tensorrt":
        return _place_tensorrt(package, host, work)
    providers = (CPU,) if backend == REFERENCE else (CUDA, CPU)
    choice = _choose(package, host, "onnxruntime", providers)
    return Placement(package.root, "onnxruntime", choice.providers, choice.reason)


def _choose(package: ModelPackage, host: BackendHost, backend: str,
            providers: tuple[str, ...] = ()):
    model = ModelConfig(name=package.name, path=package.root, backend=backend,
                        providers=providers)
    try:
        return choose_backend(model, package, host)
    except (BackendUnavailable, PackageError) as e:  # the package is not one it takes
        raise Absent(" ".join(str(e).split())) from e


def _place_tensorrt(package: ModelPackage, host: BackendHost, work: Path) -> Placement:
    from plugins_trt.engine_builder import BuildOptions, EngineUnsupported, build_engine

    copy = work / "tensorrt" / package.root.name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(package.root, copy, ignore=shutil.ignore_patterns("engines"))
    if package.kind == "llm":
        context = int(package.manifest["llm"]["context_length"])
        options = BuildOptions(precision="fp16", max_batch=1,
                               max_seq=min(context, ENGINE_MAX_SEQ))
    else:
        options = BuildOptions(precision="fp16", max_batch=ENGINE_MAX_BATCH)
    started = time.perf_counter()
    try:
        build_engine(copy, options)
    except EngineUnsupported as e:
        raise Absent(" ".join(str(e).split())) from e
    seconds = time.perf_counter() - started
    # the engine just built must be the one the daemon would take: a miss is a failure
    model = ModelConfig(name=package.name, path=copy, backend="tensorrt")
    choice = choose_backend(model, load_package(copy), host)
    return Placement(copy, "tensorrt", (), choice.reason, seconds)
