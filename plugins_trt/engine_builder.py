"""Build a TensorRT engine for a model package on this GPU.

    package model.onnx --lowering--> e2edge plugin nodes --TensorRT ONNX parser + builder-->
    engines/<gpu>-sm<cc>-trt<version>.plan + .json sidecar (written atomically)

Optimisation profiles come from the dynamic dimensions of the model's inputs, named as the
exporters name them (manifest "io" and the ONNX graph agree): batch, sequence_length,
past_sequence_length, total_sequence_length. A decoder with a KV cache gets two profiles,
because a profile's min/opt/max shapes must each be a consistent set of inputs:
    0 prefill: past = 0, sequence = total in 1..max_seq
    1 decode:  sequence = 1, past in 0..max_seq-1, total = past + 1
Everything else (vision packages) gets one profile over the batch.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2edge import __version__
from plugins_trt import engine_files
from plugins_trt.plugin_spec import PLUGIN_VERSIONS
from plugins_trt.trt_library import (
    captured_errors,
    create_builder,
    process_logger,
    require_tensorrt,
)
from runtime.errors import ConfigError, PackageError
from runtime.package import ModelPackage, load_package

PRECISIONS = ("fp16", "fp32")
DIM_ROLES = {
    "batch": ("batch", "batch_size", "N"),
    "sequence": ("sequence_length", "sequence", "seq_len"),
    "past": ("past_sequence_length", "past_seq_len", "past_length"),
    "total": ("total_sequence_length", "total_seq_len", "total_length"),
}
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]  # min, opt, max


class EngineUnsupported(PackageError):
    """The package holds what an engine cannot run (fused attention, nodes the lowering
    and TensorRT's parser do not take): the package's limit, not a fault of this box."""


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    timing_cache: Path | None = None
    max_batch: int = 1
    max_seq: int = 512
    sparse_ffn: bool = False  # lower gated FFNs to SparseFFN (adds the ffn_keep input)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.max_batch < 1 or self.max_seq < 1:
            raise ConfigError(
                f"max_batch and max_seq must be >= 1, got {self.max_batch}, {self.max_seq}"
            )


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: tuple[int | str, ...]  # int for fixed, the dim_param name for dynamic


def _role(dim: str) -> str | None:
    for role, names in DIM_ROLES.items():
        if dim in names:
            return role
    return None


def optimization_profiles(
    inputs: list[InputSpec], max_batch: int, max_seq: int, llm: bool
) -> list[Profile]:
    """Per-input (min, opt, max) shapes; raises ConfigError for a dynamic dim of unknown role."""
    roles: set[str] = set()
    for spec in inputs:
        for dim in spec.dims:
            if isinstance(dim, str):
                role = _role(dim)
                if role is None:
                    raise ConfigError(
                        f"input {spec.name!r} has a dynamic dimension {dim!r} the engine builder "
                        f"does not know; dynamic dimensions must be named one of "
                        f"{sorted(n for names in DIM_ROLES.values() for n in names)}"
                    )
                roles.add(role)
    opt_batch = 1 if llm else max_batch
    batch = (1, opt_batch, max_batch)
    if roles & {"past", "total"}:
        if max_seq < 2:
            raise ConfigError("a decoder with a KV cache needs max_seq >= 2")
        opt_past = max_seq // 2
        settings = [
            {
                "batch": batch,
                "sequence": (1, min(128, max_seq), max_seq),
                "past": (0, 0, 0),
                "total": (1, min(128, max_seq), max_seq),
            },
            {
                "batch": batch,
                "sequence": (1, 1, 1),
                "past": (0, opt_past, max_seq - 1),
                "total": (1, opt_past + 1, max_seq),
            },
        ]
    else:
        settings = [{"batch": batch, "sequence": (1, min(128, max_seq), max_seq)}]
    profiles = []
    for setting in settings:
        profile: Profile = {}
        for spec in inputs:
            shapes = []
            for k in range(3):
                shapes.append(
                    tuple(d if isinstance(d, int) else setting[_role(d)][k] for d in spec.dims)
                )
            if any(isinstance(d, str) for d in spec.dims):
                profile[spec.name] = (shapes[0], shapes[1], shapes[2])
        if profile:  # a fully static model needs no profile at all
            profiles.append(profile)
    return profiles


def model_inputs(model) -> list[InputSpec]:
    """Graph inputs that are not initializers, with fixed sizes or dim_param names."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims: list[int | str] = []
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.dim_param:
                dims.append(d.dim_param)
            else:
                raise ConfigError(f"input {value.name!r} has an unnamed dynamic dimension")
        specs.append(InputSpec(value.name, tuple(dims)))
    return specs


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    sidecar: dict[str, Any]


def build_engine(package_path: str | Path, options: BuildOptions = BuildOptions()) -> BuildResult:
    """Lower, parse and build; write the engine and its sidecar into the package."""
    package = load_package(package_path)
    _refuse_fused_attention(package)
    trt = require_tensorrt()
    from plugins_trt import cuda_driver, trt_plugins

    gpu = cuda_driver.gpu_info(0)
    lowered, report = _lower(package, options)
    profiles = optimization_profiles(
        model_inputs(lowered), options.max_batch, options.max_seq, package.kind == "llm"
    )
    trt_plugins.register()
    builder = create_builder(trt)
    network, parser = _parse(trt, builder, lowered, package.root)
    config = _builder_config(trt, builder, options, profiles)
    t0 = time.perf_counter()
    serialized = _build(builder, network, config)
    seconds = time.perf_counter() - t0
    del parser  # it owns the weights the network points at: kept alive until the build ends
    if options.timing_cache is not None:
        engine_files._write_atomically(
            Path(options.timing_cache), bytes(config.get_timing_cache().serialize())
        )
    sidecar = _sidecar(package, trt.__version__, gpu, options, profiles, report, seconds)
    stem = engine_files.engine_stem(gpu.slug, gpu.cc, trt.__version__)
    plan = engine_files.write_engine(package.root, stem, bytes(serialized), sidecar)
    return BuildResult(plan, sidecar)


def _refuse_fused_attention(package: ModelPackage) -> None:
    if package.kind == "llm" and (package.manifest.get("llm") or {}).get("attention") == "gqa":
        raise EngineUnsupported(
            f"{package.root}: exported with --attention gqa (onnxruntime's fused "
            "GroupQueryAttention, which TensorRT's parser cannot read); export it again with "
            "`e2edge export llm --attention standard` to build an engine"
        )


def _lower(package: ModelPackage, options: BuildOptions):
    """The package's graph with e2edge plugin nodes, and the lowering report."""
    import onnx

    from plugins_trt import lowering

    lowered, report = lowering.lower_model(
        onnx.load(str(package.onnx_path)),
        # MAGRIP stores each layer's neurons most salient first, so the kept prefix is right
        lowering.LoweringOptions(sparse_ffn=options.sparse_ffn),
    )
    if report.unsupported:
        raise EngineUnsupported(
            f"{package.root}: TensorRT cannot import {len(report.unsupported)} node(s): "
            f"{'; '.join(report.unsupported[:5])}; run this package on onnxruntime"
        )
    return lowered, report


def _parse(trt, builder, lowered, root: Path):
    """(network, parser) from the lowered graph; the parser must outlive the build."""
    from plugins_trt import lowering

    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, process_logger(trt))
    with tempfile.TemporaryDirectory(prefix="e2edge-lowered-") as tmp:
        path = lowering.save_lowered(lowered, Path(tmp) / "model.onnx")
        if not parser.parse_from_file(str(path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise PackageError(f"{root}: TensorRT's ONNX parser failed: {'; '.join(errors)}")
    return network, parser


def _builder_config(trt, builder, options: BuildOptions, profiles: list[Profile]):
    """Precision, timing cache and optimisation profiles."""
    config = builder.create_builder_config()
    if options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10's way; see trt_library.BELOW
    cache_bytes = b""
    if options.timing_cache is not None and Path(options.timing_cache).is_file():
        cache_bytes = Path(options.timing_cache).read_bytes()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    return config


def _build(builder, network, config):
    with captured_errors() as errors:
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT could not build the engine: {'; '.join(errors) or 'no error logged'}"
        )
    return serialized


def _sidecar(package: ModelPackage, trt_version: str, gpu, options: BuildOptions,
             profiles: list[Profile], report, seconds: float) -> dict[str, Any]:
    """What the engine was built from and for; engine_files.select_engine reads it."""
    return {
        "tensorrt_version": trt_version,
        "gpu": gpu.name,
        "compute_capability": gpu.cc,
        "plugins": PLUGIN_VERSIONS,
        "flags": {
            "precision": options.precision,
            "max_batch": options.max_batch,
            "max_seq": options.max_seq,
            "sparse_ffn": options.sparse_ffn,
        },
        "profiles": [
            {name: [list(s) for s in shapes] for name, shapes in p.items()} for p in profiles
        ],
        "lowering": report.summary(),
        "model_onnx_sha256": package.manifest["files"]["model.onnx"]["sha256"],
        "build_seconds": round(seconds, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "e2edge_version": __version__,
    }
