"""What this box has, asked in one place and only when asked: CPU, memory, the GPU and
its CUDA driver, the inference libraries (onnxruntime, TensorRT, cuda-python and NVRTC),
power sources, and the Jetson release.

Every probe returns a JSON-ready dict and never raises for a part the box lacks: it says
what is missing and why. `e2edge doctor` prints them all, benchmarks record
machine_facts(), and the backend choice (runtime/backends/selection.py) reads the GPU,
TensorRT and onnxruntime probes. The probes that load libraries run once per process.
Nothing here imports torch.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from runtime.errors import BackendUnavailable

CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
CPU_SYSFS = Path("/sys/devices/system/cpu")
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")

# /proc/cpuinfo: "model name\t: AMD EPYC 7B13" (x86; also some ARM kernels)
CPU_MODEL = re.compile(r"^model name\s*:\s*(.+)$", re.MULTILINE)
# /proc/meminfo: "MemTotal:       24683772 kB"
MEMINFO_FIELD = re.compile(r"^(\w+):\s+(\d+) kB$", re.MULTILINE)
# sysfs cache size: "32768K", "4M"
CACHE_SIZE = re.compile(r"^(\d+)([KMG]?)$")
# /etc/nv_tegra_release: "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, ..."
L4T_RELEASE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<revision>[\d.]+)")
# L4T -> the JetPack that ships it (NVIDIA's release notes); others are reported as L4T only
JETPACK_FOR_L4T = {
    "36.4.3": "6.2",
    "36.4.0": "6.1",
    "36.3.0": "6.0",
    "35.6.0": "5.1.4",
    "35.5.0": "5.1.3",
    "35.4.1": "5.1.2",
    "35.3.1": "5.1.1",
}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


# ---- parsers: one pure function per field ----------------------------------------------
def cpu_model(cpuinfo: str) -> str | None:
    """'AMD EPYC 7B13' from /proc/cpuinfo's first `model name` line."""
    found = CPU_MODEL.search(cpuinfo)
    return found[1].strip() if found else None


def meminfo_bytes(meminfo: str) -> dict[str, int]:
    """{'MemTotal': bytes, 'MemAvailable': bytes, ...} from /proc/meminfo."""
    return {name: int(kb) * 1024 for name, kb in MEMINFO_FIELD.findall(meminfo)}


def cache_bytes(size: str) -> int | None:
    """'32768K' -> 33554432, as sysfs writes cache sizes."""
    found = CACHE_SIZE.match(size.strip())
    return int(found[1]) * _UNITS[found[2]] if found else None


def l4t_release(text: str) -> str | None:
    """'36.4.3' from '# R36 (release), REVISION: 4.3, ...'."""
    found = L4T_RELEASE.search(text)
    if found is None:
        return None
    revision = found["revision"].split(".") + ["0"]
    return ".".join([found["major"], *revision[:2]])


# ---- the probes ------------------------------------------------------------------------
def usable_cores() -> int:
    """CPUs this process may run on (a container's or systemd's CPU set, not the board's):
    what the daemon's image decoding and its execution slots are sized to."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_facts() -> dict[str, Any]:
    model = cpu_model(_read(CPUINFO) or "") or platform.processor() or platform.machine()
    return {
        "model": model,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "architecture": platform.machine(),
        "l3_cache_bytes": _l3_cache_bytes(),
    }


def _l3_cache_bytes() -> int | None:
    for index in sorted((CPU_SYSFS / "cpu0" / "cache").glob("index*")):
        if (_read(index / "level") or "").strip() == "3":
            return cache_bytes(_read(index / "size") or "")
    return None


def memory_facts() -> dict[str, Any]:
    fields = meminfo_bytes(_read(MEMINFO) or "")
    return {"total_bytes": fields.get("MemTotal"), "available_bytes": fields.get("MemAvailable")}


@functools.cache
def gpu_facts() -> dict[str, Any]:
    """The first GPU through the CUDA driver (cuda-python), else NVML; or why there is none."""
    try:
        return _gpu_from_cuda_driver()
    except BackendUnavailable as e:
        cuda_problem = str(e)
    found, nvml_problem = _gpu_from_nvml()
    if found is not None:
        return found
    return {"present": False, "reason": f"{cuda_problem}; NVML: {nvml_problem}"}


def _gpu_row(name: str, major: int, minor: int, memory: int, source: str) -> dict[str, Any]:
    from plugins_trt.cuda_driver import GpuInfo

    gpu = GpuInfo(name, major, minor, memory, clock_khz=0)
    return {
        "present": True,
        "name": gpu.name,
        "compute_capability": f"{major}.{minor}",
        "sm": gpu.cc,
        "slug": gpu.slug,  # how engine file names spell this GPU
        "memory_bytes": memory,
        "source": source,
    }


def _gpu_from_cuda_driver() -> dict[str, Any]:
    from plugins_trt import cuda_driver

    try:
        gpu = cuda_driver.gpu_info(0)
        driver, _ = cuda_driver.bindings()
        version = int(cuda_driver.check(driver.cuDriverGetVersion(), "cuDriverGetVersion"))
    except cuda_driver.CudaError as e:
        raise BackendUnavailable(str(e)) from e
    row = _gpu_row(gpu.name, gpu.cc_major, gpu.cc_minor, gpu.total_memory,
                   "CUDA driver (cuda-python)")
    row["cuda_driver_api"] = f"{version // 1000}.{version % 1000 // 10}"
    return row


def _gpu_from_nvml() -> tuple[dict[str, Any] | None, str]:
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return None, f"NVML did not initialise ({e})"
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None, "NVML sees no GPU"
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        row = _gpu_row(name.decode() if isinstance(name, bytes) else str(name), major, minor,
                       int(pynvml.nvmlDeviceGetMemoryInfo(handle).total), "NVML")
        driver = pynvml.nvmlSystemGetDriverVersion()
        row["driver_version"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())
        row["cuda_driver_api"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        return row, ""
    except pynvml.NVMLError as e:
        return None, f"NVML failed ({e})"
    finally:
        pynvml.nvmlShutdown()


@functools.cache
def tensorrt_facts() -> dict[str, Any]:
    from plugins_trt.trt_library import require_tensorrt

    try:
        trt = require_tensorrt()
    except BackendUnavailable as e:
        return {"available": False, "reason": str(e)}
    return {"available": True, "version": trt.__version__}


@functools.cache
def onnxruntime_facts() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return {"available": False,
                "reason": f"onnxruntime cannot be imported ({e}); pip install 'e2edge[cpu]' "
                          "(or [gpu] for onnxruntime-gpu)"}
    return {"available": True, "version": ort.__version__,
            "providers": list(ort.get_available_providers())}


@functools.cache
def cuda_python_facts() -> dict[str, Any]:
    """cuda-python (driver + NVRTC bindings) and the NVRTC library it loads."""
    from plugins_trt import cuda_driver, nvrtc_compiler

    try:
        cuda_driver.bindings()
    except BackendUnavailable as e:
        return {"available": False, "reason": str(e)}
    facts: dict[str, Any] = {"available": True, "version": _cuda_bindings_version()}
    try:
        facts["nvrtc_version"] = ".".join(map(str, nvrtc_compiler.nvrtc_version()))
    except (cuda_driver.CudaError, RuntimeError, OSError) as e:
        facts["nvrtc_version"] = None
        facts["nvrtc_reason"] = f"NVRTC cannot be loaded ({e}); pip install nvidia-cuda-nvrtc"
    return facts


def _cuda_bindings_version() -> str:
    try:
        import cuda.bindings
    except ImportError:
        return "unknown (the older cuda-python layout)"
    return str(getattr(cuda.bindings, "__version__", "unknown"))


def cpu_kernel_facts(weights: str) -> dict[str, Any]:
    """e2edge's CPU `weights` ("int4" or "fp32") kernel: whether it built here and runs
    the package's int4 MatMulNBits or fp32 MatMul nodes."""
    from runtime.kernels import library as kernel_library

    reason = kernel_library.unavailable(weights)
    if reason is not None:
        return {"available": False, "reason": reason}
    return {"available": True, "library": str(kernel_library.load().path),
            "isa": "AVX-512 VNNI" if weights == "int4" else "AVX-512"}


def power_facts() -> dict[str, Any]:
    """Every power source with why it is absent; `auto` is the one the daemon would open."""
    from runtime.power.sources import source_checks

    checks = [{"name": name, "found": problem is None, **({"reason": problem} if problem else {})}
              for name, problem in source_checks()]
    auto = next((c["name"] for c in checks if c["found"]), "none")
    return {"auto": auto, "sources": checks}


def jetson_facts() -> dict[str, Any]:
    text = _read(NV_TEGRA_RELEASE)
    if text is None:
        return {"is_jetson": False, "reason": f"{NV_TEGRA_RELEASE} is absent"}
    release = l4t_release(text)
    model = (_read(DEVICE_TREE_MODEL) or "").strip("\0\n ") or None
    return {"is_jetson": True, "model": model, "l4t": release,
            "jetpack": JETPACK_FOR_L4T.get(release or "")}


def collect() -> dict[str, Any]:
    """Everything above, as `e2edge doctor --json` prints it."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_facts(),
        "memory": memory_facts(),
        "gpu": gpu_facts(),
        "jetson": jetson_facts(),
        "onnxruntime": onnxruntime_facts(),
        "tensorrt": tensorrt_facts(),
        "cuda_python": cuda_python_facts(),
        "int4_kernel": cpu_kernel_facts("int4"),
        "fp32_kernel": cpu_kernel_facts("fp32"),
        "power": power_facts(),
    }


def machine_facts() -> dict[str, Any]:
    """The short form benchmarks record next to their numbers."""
    return {
        "cpu": cpu_facts()["model"],
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
