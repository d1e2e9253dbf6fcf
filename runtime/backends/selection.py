"""Which backend a configured model runs on here, and why: one decision, in one place.

    choose_backend(model_config, package, host) -> BackendChoice(name, providers, reason)

`host` is what this box offers (BackendHost: onnxruntime's providers, the GPU, TensorRT),
probed once by BackendHost.probe() or written by hand in a test; the decision itself asks
no hardware, it only reads the package's engine sidecars. By the config's `backend:`
  tensorrt     the package's engine for this GPU and TensorRT version, else
               BackendUnavailable saying which is missing
  onnxruntime  the configured providers, else the default: the best available for an LLM
               (runtime/backends/onnxruntime_backend.AUTO_PROVIDERS), the CPU for a vision
               model
  auto         the TensorRT engine when one matches this GPU and TensorRT version; else
               onnxruntime's CUDA provider when onnxruntime-gpu is installed and the CUDA
               driver sees a GPU; else onnxruntime's CPU provider
An LLM package exported with --attention gqa shares one KV buffer between past and
present (GroupQueryAttention): it runs on onnxruntime, with the buffer in host memory on
the CPU provider or in device memory on the CUDA provider (kv_buffer_providers); auto
takes CUDA when onnxruntime-gpu sees a GPU and cuda-python can copy within device
memory, else the CPU. No TensorRT engine is built for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import BackendUnavailable, PackageError
from runtime.package import ModelPackage

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class BackendHost:
    """What the choice needs to know about this box."""

    onnxruntime_providers: tuple[str, ...] = ()
    onnxruntime_missing: str | None = None  # why onnxruntime cannot run here
    gpu_name: str | None = None  # the GPU the CUDA driver sees
    gpu_missing: str | None = None  # why there is none
    # (GPU slug, compute capability as 87, TensorRT version): the engine file that fits
    engine_target: tuple[str, int, str] | None = None
    tensorrt_missing: str | None = None  # why no engine can run here at all
    # why cuda-python cannot copy within device memory (a gqa KV buffer on the GPU needs it)
    cuda_python_missing: str | None = None

    @classmethod
    def from_facts(cls, facts: dict[str, Any]) -> BackendHost:
        """From runtime.host_facts' gpu, tensorrt and onnxruntime probes."""
        gpu, trt, ort = facts["gpu"], facts["tensorrt"], facts["onnxruntime"]
        cuda_gpu = gpu["present"] and gpu.get("source", "").startswith("CUDA driver")
        if not trt["available"]:
            tensorrt_missing = trt["reason"]
        elif not cuda_gpu:
            tensorrt_missing = gpu.get("reason") or "the CUDA driver (cuda-python) sees no GPU"
        else:
            tensorrt_missing = None
        return cls(
            onnxruntime_providers=tuple(ort.get("providers", ())),
            onnxruntime_missing=None if ort["available"] else ort["reason"],
            gpu_name=gpu.get("name") if gpu["present"] else None,
            gpu_missing=None if gpu["present"] else gpu["reason"],
            engine_target=(
                (gpu["slug"], gpu["sm"], trt["version"]) if tensorrt_missing is None else None
            ),
            tensorrt_missing=tensorrt_missing,
            cuda_python_missing=_cuda_python_missing(facts.get("cuda_python")),
        )

    def onnxruntime_cuda_missing(self) -> str | None:
        """Why onnxruntime's CUDA provider cannot run here; None when it can."""
        if self.onnxruntime_missing is not None:
            return self.onnxruntime_missing
        if CUDA not in self.onnxruntime_providers:
            return "onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)"
        if self.gpu_name is None:
            return f"onnxruntime-gpu is installed but sees no GPU ({self.gpu_missing})"
        return None

    @classmethod
    def probe(cls) -> BackendHost:
        from runtime import host_facts

        return cls.from_facts({"gpu": host_facts.gpu_facts(),
                               "tensorrt": host_facts.tensorrt_facts(),
                               "onnxruntime": host_facts.onnxruntime_facts(),
                               "cuda_python": host_facts.cuda_python_facts()})


def _cuda_python_missing(facts: dict[str, Any] | None) -> str | None:
    if facts is None:
        return "cuda-python was not probed"
    return None if facts["available"] else facts["reason"]


@dataclass(frozen=True)
class BackendChoice:
    name: str  # "tensorrt" | "onnxruntime"
    providers: tuple[str, ...]  # onnxruntime's execution providers; () for tensorrt
    reason: str


def choose_backend(model: Any, package: ModelPackage, host: BackendHost) -> BackendChoice:
    """The backend `model` (a runtime.config.ModelConfig) runs on here, with the reason;
    BackendUnavailable (or PackageError) when what the config asks cannot run here."""
    if shares_kv_buffer(package):
        return _shared_kv_buffer(model, package, host)
    if model.backend == "tensorrt":
        plan, problem = _engine(package, host)
        if plan is None:
            raise BackendUnavailable(problem)
        return BackendChoice("tensorrt", (), f"tensorrt: {_engine_fits(plan, host)}")
    if model.backend == "onnxruntime":
        return _onnxruntime(model, package, host)
    return _auto(model, package, host)


def _auto(model: Any, package: ModelPackage, host: BackendHost) -> BackendChoice:
    plan, problem = _engine(package, host)
    if plan is not None:
        return BackendChoice("tensorrt", (), f"auto: {_engine_fits(plan, host)}")
    if host.onnxruntime_missing is not None:
        raise BackendUnavailable(f"auto: no backend for {package.root} here: no TensorRT "
                                 f"engine ({problem}); {host.onnxruntime_missing}")
    no_engine = f"auto: no TensorRT engine ({problem})"
    if model.providers:
        return _onnxruntime(model, package, host, why=no_engine)
    no_cuda = host.onnxruntime_cuda_missing()
    if no_cuda is None:
        return BackendChoice("onnxruntime", (CUDA, CPU),
                             f"{no_engine}; onnxruntime-gpu sees {host.gpu_name}")
    return BackendChoice("onnxruntime", (CPU,),
                         f"{no_engine}; {no_cuda}; onnxruntime's CPU provider")


def _onnxruntime(model: Any, package: ModelPackage, host: BackendHost,
                 why: str | None = None) -> BackendChoice:
    from runtime.backends.onnxruntime_backend import pick_providers

    def reason(detail: str) -> str:
        return f"{why}; {detail}" if why else f"onnxruntime: {detail}"

    if model.providers:
        _need_onnxruntime(host, model.providers)
        providers = pick_providers(model.providers, host.onnxruntime_providers)
        return BackendChoice("onnxruntime", tuple(providers), reason("the configured providers"))
    _need_onnxruntime(host, ())
    if package.kind == "vision":
        return BackendChoice("onnxruntime", (CPU,), reason(
            "a vision model runs on the CPU provider unless the config names providers"))
    providers = pick_providers(None, host.onnxruntime_providers)
    return BackendChoice("onnxruntime", tuple(providers),
                         reason("the best providers onnxruntime has here"))


def _need_onnxruntime(host: BackendHost, providers: Sequence[str]) -> None:
    if host.onnxruntime_missing is not None:
        raise BackendUnavailable(host.onnxruntime_missing)
    from runtime.backends.onnxruntime_backend import pick_providers

    pick_providers(providers, host.onnxruntime_providers)  # raises naming a missing one


def _engine(package: ModelPackage, host: BackendHost) -> tuple[Path | None, str]:
    """(the engine file that fits this GPU and TensorRT, or None; why none fits)."""
    if host.engine_target is None:
        return None, host.tensorrt_missing or "TensorRT cannot run here"
    from plugins_trt import engine_files

    slug, cc, version = host.engine_target
    sha = package.manifest["files"]["model.onnx"]["sha256"]
    choice = engine_files.select_engine(package.root, slug, cc, version, sha)
    return choice.plan, choice.reason


def _engine_fits(plan: Path, host: BackendHost) -> str:
    return (f"engine {plan.name} matches this GPU ({host.gpu_name}) and TensorRT "
            f"{host.engine_target[2]}")


# ---- LLM packages whose KV buffer lives in host memory ------------------------------------
def shares_kv_buffer(package: ModelPackage) -> bool:
    """An LLM package exported with --attention gqa (manifest llm.kv_cache.mode)."""
    llm = package.manifest.get("llm") or {}
    return package.kind == "llm" and (llm.get("kv_cache") or {}).get("mode") == "shared_buffer"


KV_BUFFER_PROVIDERS = (CUDA, CPU)  # where GroupQueryAttention updates the buffer in place


def names_providers(providers: Sequence[str] | None) -> bool:
    """Whether a config names its providers: not when it gives none, or `[auto]` (the
    best this onnxruntime has, as for none where the daemon picks)."""
    return bool(providers) and list(providers) != ["auto"]


def kv_buffer_providers(root: Path, backend: str, providers: Sequence[str] | None) -> list[str]:
    """The providers for a shared-KV-buffer package: onnxruntime's CUDA or CPU provider.

    The buffer is updated in place by GroupQueryAttention: in host memory on the CPU
    provider, in device memory on the CUDA provider (runtime/llm/kv_buffer.py). TensorRT
    has no such layer: a TensorRT engine needs an --attention standard export.
    """
    if backend == "tensorrt":
        raise PackageError(f"{root}: a --attention gqa package runs on onnxruntime (CPU or "
                           "CUDA provider); for a TensorRT engine, export with `e2edge export "
                           "llm --attention standard`")
    if not names_providers(providers):
        return [CPU]
    others = [p for p in providers if p not in KV_BUFFER_PROVIDERS]
    if others:
        raise PackageError(f"{root}: a --attention gqa package runs on onnxruntime's "
                           f"CUDA or CPU provider, not {others}")
    return list(providers)


def _shared_kv_buffer(model: Any, package: ModelPackage, host: BackendHost) -> BackendChoice:
    """A gqa package: the configured providers, else CUDA when it can run there, else CPU."""
    providers = kv_buffer_providers(package.root, model.backend, model.providers)
    if names_providers(model.providers):
        _need_onnxruntime(host, providers)
        where = "device" if providers[0] == CUDA else "host"
        return BackendChoice("onnxruntime", tuple(providers),
                             f"{model.backend}: the configured providers; the shared KV "
                             f"buffer lives in {where} memory")
    _need_onnxruntime(host, ())
    gpu = host.onnxruntime_cuda_missing()
    if gpu is None:
        if host.cuda_python_missing is None:
            return BackendChoice("onnxruntime", (CUDA, CPU),
                                 f"{model.backend}: onnxruntime-gpu sees {host.gpu_name}; the "
                                 "shared KV buffer lives in device memory")
        gpu = (f"onnxruntime-gpu sees {host.gpu_name}, but {host.cuda_python_missing} "
               "(it copies within the device KV buffer)")
    return BackendChoice("onnxruntime", (CPU,), f"{model.backend}: {gpu}; a --attention gqa "
                         "package runs on onnxruntime's CPU provider, its KV buffer in host "
                         "memory")
