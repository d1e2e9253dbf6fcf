"""Compile the kernels in plugins_trt/kernels at run time with NVRTC (through cuda-python).

A Jetson's JetPack and a pip-installed cuda-python ship NVRTC but maybe no toolkit headers,
so the kernels are header-free and their one shared header (common.cuh) is handed to NVRTC
as an in-memory header. The result is a cubin for the exact GPU architecture when this
NVRTC knows it, else PTX for the newest architecture it knows that the GPU can run (the
driver JIT-compiles it once). Results are cached on disk per architecture, keyed by the
source, the headers, the options and the NVRTC version, so a second start compiles
nothing. Every NVRTC call is checked; a failed compilation raises with NVRTC's log.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from plugins_trt.cuda_driver import bindings, check

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
HEADERS = ("common.cuh",)
# -default-device is not needed (every function is __global__ or __device__); fast math is
# left off so expf / tanhf in the activations match the numpy references.
BASE_OPTIONS = ("--std=c++14",)


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel; the message carries its log."""


@dataclass(frozen=True)
class CompiledKernel:
    source: str  # file name under plugins_trt/kernels
    target: str  # "sm_87" (cubin) or "compute_80" (PTX)
    image: bytes
    cache_file: Path | None

    @property
    def is_ptx(self) -> bool:
        return self.target.startswith("compute_")


def default_cache_dir() -> Path:
    """$E2EDGE_KERNEL_CACHE, else ~/.cache/e2edge/kernels."""
    configured = os.environ.get("E2EDGE_KERNEL_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "e2edge" / "kernels"


def nvrtc_version() -> tuple[int, int]:
    _, nvrtc = bindings()
    major, minor = check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return int(major), int(minor)


def supported_archs() -> list[int]:
    """Real architectures this NVRTC can emit cubins for, e.g. [75, 80, 86, 87, 89, 90]."""
    _, nvrtc = bindings()
    return sorted(int(a) for a in check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))


def choose_target(cc: int, archs: list[int]) -> str:
    """sm_<cc> when NVRTC knows the GPU, else PTX for the newest older architecture."""
    if cc in archs:
        return f"sm_{cc}"
    older = [a for a in archs if a <= cc]
    if not older:
        raise KernelCompileError(
            f"this NVRTC supports architectures {archs}, none of which runs on sm_{cc}; "
            "install the cuda-python/NVRTC that matches the GPU's CUDA version"
        )
    return f"compute_{max(older)}"


def _read_sources(source: str) -> tuple[bytes, list[bytes], list[bytes]]:
    path = KERNEL_DIR / source
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such kernel source")
    headers = [(KERNEL_DIR / h).read_bytes() for h in HEADERS]
    return path.read_bytes(), headers, [h.encode() for h in HEADERS]


def _cache_key(text: bytes, headers: list[bytes], options: tuple[str, ...], target: str) -> str:
    digest = hashlib.sha256()
    for part in (text, *headers, "\0".join(options).encode(), target.encode()):
        digest.update(part)
        digest.update(b"\0")
    digest.update(repr(nvrtc_version()).encode())
    return digest.hexdigest()[:20]


def _nvrtc_compile(
    source: str, text: bytes, headers: list[bytes], names: list[bytes], options: list[bytes]
) -> tuple[bytes, str]:
    """(image, log) for the options; raises KernelCompileError with the log on failure."""
    _, nvrtc = bindings()
    program = check(
        nvrtc.nvrtcCreateProgram(text, source.encode(), len(headers), headers, names),
        "nvrtcCreateProgram",
    )
    try:
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        log_size = check(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
        log_buffer = b" " * log_size
        check(nvrtc.nvrtcGetProgramLog(program, log_buffer), "nvrtcGetProgramLog")
        log = log_buffer.rstrip(b"\0 ").decode(errors="replace")
        if int(getattr(status, "value", status)) != 0:
            flags = " ".join(o.decode() for o in options)
            raise KernelCompileError(f"NVRTC could not compile {source} ({flags}):\n{log}")
        is_ptx = any(o.startswith(b"--gpu-architecture=compute_") for o in options)
        if is_ptx:
            size = check(nvrtc.nvrtcGetPTXSize(program), "nvrtcGetPTXSize")
            image = b" " * size
            check(nvrtc.nvrtcGetPTX(program, image), "nvrtcGetPTX")
        else:
            size = check(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
            image = b" " * size
            check(nvrtc.nvrtcGetCUBIN(program, image), "nvrtcGetCUBIN")
        return image, log
    finally:
        check(nvrtc.nvrtcDestroyProgram(program), "nvrtcDestroyProgram")


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compile_kernel(
    source: str,
    cc: int,
    cache_dir: Path | str | None = None,
    extra_options: tuple[str, ...] = (),
    use_cache: bool = True,
) -> CompiledKernel:
    """Compile plugins_trt/kernels/<source> for compute capability `cc` (87 = sm_87).

    The cached image is reused when source, headers, options and NVRTC version match.
    """
    text, headers, names = _read_sources(source)
    target = choose_target(cc, supported_archs())
    options = (*BASE_OPTIONS, f"--gpu-architecture={target}", *extra_options)
    cache_file = None
    if use_cache:
        key = _cache_key(text, headers, options, target)
        suffix = "ptx" if target.startswith("compute_") else "cubin"
        cache_file = (
            Path(cache_dir or default_cache_dir()) / target / f"{Path(source).stem}-{key}.{suffix}"
        )
        if cache_file.is_file():
            return CompiledKernel(source, target, cache_file.read_bytes(), cache_file)
    image, _log = _nvrtc_compile(source, text, headers, names, [o.encode() for o in options])
    if cache_file is not None:
        _write_atomically(cache_file, image)
    return CompiledKernel(source, target, image, cache_file)


def kernel_sources() -> list[str]:
    """Every .cu under plugins_trt/kernels."""
    return sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
