"""The CUDA driver through cuda-python: the one place that asks about the GPU.

Everything here is lazy: importing this module loads neither cuda-python nor libcuda. Every
driver call goes through `check`, so a failure raises with the call's name and CUDA's own
error text instead of returning a status nobody reads.

The kernels, the TensorRT plugins and the TensorRT backend all run in the *primary*
context of the device, the one CUDA's runtime API (and so TensorRT, torch and CuPy) uses,
so device pointers from any of them are valid here.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import BackendUnavailable


class CudaError(RuntimeError):
    """A CUDA driver or NVRTC call failed."""


_lock = threading.Lock()
_bindings: tuple[Any, Any] | None = None
_initialised = False


def bindings() -> tuple[Any, Any]:
    """(driver, nvrtc) modules of cuda-python; BackendUnavailable when it is not installed."""
    global _bindings
    if _bindings is None:
        try:
            from cuda.bindings import driver, nvrtc  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cuda as driver  # older cuda-python layout
                from cuda import nvrtc
            except ImportError as e:
                raise BackendUnavailable(
                    "cuda-python is not installed (pip install cuda-python); the e2edge "
                    "kernels and the TensorRT backend need it"
                ) from e
        _bindings = (driver, nvrtc)
    return _bindings


def _status_code(status: Any) -> int:
    return int(getattr(status, "value", status))


def _error_text(status: Any) -> str:
    driver, nvrtc = bindings()
    if isinstance(status, driver.CUresult):
        _, name = driver.cuGetErrorName(status)
        _, text = driver.cuGetErrorString(status)
        return f"{_text(name)} ({_text(text)})"
    if isinstance(status, nvrtc.nvrtcResult):
        return _text(nvrtc.nvrtcGetErrorString(status)[1])
    return str(status)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def check(result: Any, what: str) -> Any:
    """cuda-python returns (status, *values): raise CudaError on failure, else the values."""
    if isinstance(result, tuple):
        status, values = result[0], result[1:]
    else:
        status, values = result, ()
    if _status_code(status) != 0:
        raise CudaError(f"{what} failed: {_error_text(status)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def init() -> None:
    """cuInit once; a machine without a driver or GPU gets BackendUnavailable."""
    global _initialised
    if _initialised:
        return
    driver, _ = bindings()
    with _lock:
        if _initialised:
            return
        try:
            check(driver.cuInit(0), "cuInit")
            count = check(driver.cuDeviceGetCount(), "cuDeviceGetCount")
        except (CudaError, RuntimeError, OSError) as e:
            raise BackendUnavailable(f"no usable CUDA driver or GPU on this machine ({e})") from e
        if count == 0:
            raise BackendUnavailable("no CUDA GPU on this machine")
        _initialised = True


def ensure_context(device: int = 0) -> int:
    """The current context (as an int handle); the device's primary context if none is."""
    driver, _ = bindings()
    init()
    context = check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
    if int(context) == 0:
        dev = check(driver.cuDeviceGet(device), "cuDeviceGet")
        context = check(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
        check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    return int(context)


@dataclass(frozen=True)
class GpuInfo:
    """What engine files and kernel caches are keyed on."""

    name: str  # e.g. "NVIDIA H100 80GB HBM3", "Orin"
    cc_major: int
    cc_minor: int
    total_memory: int  # bytes
    clock_khz: int  # SM clock
    multiprocessors: int = 0  # SMs (0: not asked); the tensor-core kernels size grids by it
    shared_memory_optin: int = 0  # bytes of shared memory a block may opt into (0: not asked)

    @property
    def cc(self) -> int:
        """Compute capability as one number: 87 for Orin, 90 for H100."""
        return self.cc_major * 10 + self.cc_minor

    @property
    def slug(self) -> str:
        """The name as a file-name part: 'nvidia-h100-80gb-hbm3', 'orin'."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


def gpu_info(device: int | None = None) -> GpuInfo:
    """The GPU of the current context, or of `device` (default 0) when none is current."""
    driver, _ = bindings()
    init()
    if device is None:
        ensure_context()
        dev = check(driver.cuCtxGetDevice(), "cuCtxGetDevice")
    else:
        dev = check(driver.cuDeviceGet(device), "cuDeviceGet")
    raw_name = check(driver.cuDeviceGetName(256, dev), "cuDeviceGetName")
    name = raw_name.split(b"\0", 1)[0].decode() if isinstance(raw_name, bytes) else str(raw_name)
    attr = driver.CUdevice_attribute

    def attribute(which: Any) -> int:
        return int(check(driver.cuDeviceGetAttribute(which, dev), f"cuDeviceGetAttribute({which})"))

    return GpuInfo(
        name=name.strip(),
        cc_major=attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        cc_minor=attribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        total_memory=int(check(driver.cuDeviceTotalMem(dev), "cuDeviceTotalMem")),
        clock_khz=attribute(attr.CU_DEVICE_ATTRIBUTE_CLOCK_RATE),  # still in CUDA 13
        multiprocessors=attribute(attr.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        shared_memory_optin=attribute(attr.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
    )


# ---- modules and launches ---------------------------------------------------------------
def load_module(image: bytes, is_ptx: bool) -> Any:
    """Load a cubin (or PTX, which the driver JIT-compiles) into the current context."""
    driver, _ = bindings()
    ensure_context()
    data = image + b"\0" if is_ptx and not image.endswith(b"\0") else image
    buffer = np.frombuffer(data, dtype=np.uint8)
    return check(driver.cuModuleLoadData(buffer.ctypes.data), "cuModuleLoadData")


def get_function(module: Any, name: str) -> Any:
    driver, _ = bindings()
    return check(driver.cuModuleGetFunction(module, name.encode()), f"cuModuleGetFunction({name})")


def set_max_dynamic_shared(function: Any, nbytes: int) -> None:
    """Let `function` take `nbytes` of dynamic shared memory (needed above 48 KiB)."""
    driver, _ = bindings()
    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    check(driver.cuFuncSetAttribute(function, attr, int(nbytes)),
          f"cuFuncSetAttribute(max dynamic shared memory {nbytes})")


def launch(
    function: Any,
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: list[np.generic],
    stream: int = 0,
    shared_bytes: int = 0,
    what: str = "kernel",
) -> None:
    """cuLaunchKernel with args given as numpy scalars of the kernel's parameter types
    (np.uint64 for pointers, np.int32 for int, np.float32 for float)."""
    driver, _ = bindings()
    holders = [np.array(arg) for arg in args]  # each parameter's bytes, alive for the call
    params = np.array([h.ctypes.data for h in holders], dtype=np.uint64)
    check(
        driver.cuLaunchKernel(
            function, *grid, *block, shared_bytes, driver.CUstream(stream), params.ctypes.data, 0
        ),
        f"cuLaunchKernel({what})",
    )


# ---- memory and streams, for the TensorRT backend ---------------------------------------
def mem_alloc(nbytes: int) -> int:
    driver, _ = bindings()
    ensure_context()
    return int(check(driver.cuMemAlloc(max(int(nbytes), 1)), f"cuMemAlloc({nbytes})"))


def mem_free(pointer: int) -> None:
    driver, _ = bindings()
    check(driver.cuMemFree(driver.CUdeviceptr(pointer)), "cuMemFree")


def memcpy_htod_async(device_pointer: int, host: np.ndarray, stream: int) -> None:
    driver, _ = bindings()
    host = np.ascontiguousarray(host)
    if host.nbytes:
        check(
            driver.cuMemcpyHtoDAsync(
                driver.CUdeviceptr(device_pointer),
                host.ctypes.data,
                host.nbytes,
                driver.CUstream(stream),
            ),
            "cuMemcpyHtoDAsync",
        )


def memcpy_dtoh_async(host: np.ndarray, device_pointer: int, stream: int) -> None:
    driver, _ = bindings()
    if not host.flags.c_contiguous:
        raise ValueError("memcpy_dtoh_async needs a C-contiguous host array")
    if host.nbytes:
        check(
            driver.cuMemcpyDtoHAsync(
                host.ctypes.data,
                driver.CUdeviceptr(device_pointer),
                host.nbytes,
                driver.CUstream(stream),
            ),
            "cuMemcpyDtoHAsync",
        )


def memset_d32_async(device_pointer: int, value: int, count: int, stream: int) -> None:
    driver, _ = bindings()
    if count:
        check(
            driver.cuMemsetD32Async(
                driver.CUdeviceptr(device_pointer), value, count, driver.CUstream(stream)
            ),
            "cuMemsetD32Async",
        )


def memset_d8_async(device_pointer: int, value: int, count: int, stream: int) -> None:
    driver, _ = bindings()
    if count:
        check(
            driver.cuMemsetD8Async(
                driver.CUdeviceptr(device_pointer), value, count, driver.CUstream(stream)
            ),
            "cuMemsetD8Async",
        )


def stream_create() -> int:
    driver, _ = bindings()
    ensure_context()
    flags = _status_code(driver.CUstream_flags.CU_STREAM_NON_BLOCKING)
    return int(check(driver.cuStreamCreate(flags), "cuStreamCreate"))


def stream_synchronize(stream: int) -> None:
    driver, _ = bindings()
    check(driver.cuStreamSynchronize(driver.CUstream(stream)), "cuStreamSynchronize")


def stream_destroy(stream: int) -> None:
    driver, _ = bindings()
    check(driver.cuStreamDestroy(driver.CUstream(stream)), "cuStreamDestroy")


def memcpy_dtod(destination: int, source: int, nbytes: int) -> None:
    """Copy within device memory, synchronously (ordered after work the caller waited for)."""
    driver, _ = bindings()
    ensure_context()  # this thread's: decode steps run on the model's worker threads
    if nbytes:
        check(driver.cuMemcpyDtoD(driver.CUdeviceptr(destination), driver.CUdeviceptr(source),
                                  int(nbytes)), "cuMemcpyDtoD")
