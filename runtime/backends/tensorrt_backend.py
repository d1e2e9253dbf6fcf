"""TensorRT: runs the engine that `e2edge build-engine` wrote into the package for this GPU.

The engine is chosen by GPU, compute capability, TensorRT version and the sha256 of the
package's model.onnx (plugins_trt/engine_files.py); when none fits, the constructor raises
BackendUnavailable saying why, and the caller falls back to onnxruntime. The e2edge plugins
are registered (and their kernels compiled, cached on disk) before deserialising.

Buffers are plain CUDA allocations through cuda-python; no torch. Inputs given as numpy are
copied in; outputs named in `keep` stay on the GPU as DeviceTensor and can be fed back as
inputs without a copy (the KV cache between decode steps). An LLM engine has two
optimisation profiles (prefill, decode); each call runs on an execution context of the
first profile its input shapes fit.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from plugins_trt.trt_library import captured_errors, create_runtime, require_tensorrt
from runtime.errors import BackendUnavailable, InvalidRequest
from runtime.package import ModelPackage, load_package

log = logging.getLogger(__name__)


class DeviceTensor:
    """A GPU buffer of `shape` and `dtype`, freed when the object goes away."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        from plugins_trt import cuda_driver

        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.pointer = cuda_driver.mem_alloc(max(self.nbytes, 256))  # TensorRT wants non-null
        self._free = weakref.finalize(self, cuda_driver.mem_free, self.pointer)

    def __repr__(self) -> str:
        return f"DeviceTensor(shape={self.shape}, dtype={self.dtype})"


class _Scratch:
    """Grow-only device buffers per tensor name, reused across calls."""

    def __init__(self) -> None:
        self._buffers: dict[str, DeviceTensor] = {}

    def get(self, name: str, nbytes: int) -> int:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < nbytes:
            buffer = DeviceTensor((max(nbytes, 256),), np.uint8)
            self._buffers[name] = buffer
        return buffer.pointer

    def clear(self) -> None:
        self._buffers.clear()


def _onnx_sha256(package: ModelPackage) -> str:
    return package.manifest["files"]["model.onnx"]["sha256"]


def tensorrt_unavailable_reason(package: ModelPackage, device: int = 0) -> str | None:
    """Why this package cannot run on TensorRT here (None when an engine fits)."""
    try:
        trt = require_tensorrt()
        from plugins_trt import cuda_driver, engine_files

        gpu = cuda_driver.gpu_info(device)
    except BackendUnavailable as e:
        return str(e)
    choice = engine_files.select_engine(
        package.root, gpu.slug, gpu.cc, trt.__version__, _onnx_sha256(package)
    )
    return choice.reason or None


class TensorRTBackend:
    """A deserialised engine plus one execution context per optimisation profile used."""

    name = "tensorrt"

    def __init__(self, package: ModelPackage | str | Path, device: int = 0):
        if not isinstance(package, ModelPackage):
            package = load_package(package)
        trt = require_tensorrt()
        from plugins_trt import cuda_driver, engine_files, kernels, trt_plugins
        from plugins_trt.plugin_spec import FFN_KEEP_INPUT

        gpu = cuda_driver.gpu_info(device)
        cuda_driver.ensure_context(device)
        choice = engine_files.select_engine(
            package.root, gpu.slug, gpu.cc, trt.__version__, _onnx_sha256(package)
        )
        if choice.plan is None:
            raise BackendUnavailable(choice.reason)
        trt_plugins.register()
        kernels.LIBRARY.preload()
        self._cuda = cuda_driver
        self._runtime = create_runtime(trt)
        with captured_errors() as errors:
            self._engine = self._runtime.deserialize_cuda_engine(choice.plan.read_bytes())
        if self._engine is None:
            raise BackendUnavailable(
                f"{choice.plan}: TensorRT could not deserialise it: "
                f"{'; '.join(errors) or 'no error logged'}"
            )
        self.plan = choice.plan
        self.sidecar = choice.sidecar
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._dynamic = [
            n for n in self.input_names if -1 in tuple(self._engine.get_tensor_shape(n))
        ]
        self.providers = [f"TensorRT {trt.__version__} on {gpu.name} ({self.plan.name})"]
        self.defaults: dict[str, np.ndarray] = {}
        if FFN_KEEP_INPUT in self.input_names:  # a sparse-FFN engine runs at full width by default
            self.defaults[FFN_KEEP_INPUT] = np.ones(1, np.float32)
        self._stream = cuda_driver.stream_create()
        self._contexts: dict[int, Any] = {}
        self._scratch = _Scratch()
        self._closed = False
        log.info("TensorRT engine %s on %s", self.plan, gpu.name)

    # ---- profiles -----------------------------------------------------------------------
    def _fits(self, name: str, shape: tuple[int, ...], profile: int) -> bool:
        low, _, high = self._engine.get_tensor_profile_shape(name, profile)
        return len(shape) == len(low) and all(a <= s <= b for s, a, b in zip(shape, low, high))

    def _context_for(self, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        for profile in range(max(1, self._engine.num_optimization_profiles)):
            if all(self._fits(n, shapes[n], profile) for n in self._dynamic):
                context = self._contexts.get(profile)
                if context is None:
                    with captured_errors() as errors:
                        context = self._engine.create_execution_context()
                    if context is None:
                        raise RuntimeError(
                            f"TensorRT: no execution context: {'; '.join(errors) or 'no log'}"
                        )
                    if profile:
                        context.set_optimization_profile_async(profile, self._stream)
                        self._cuda.stream_synchronize(self._stream)
                    self._contexts[profile] = context
                return context
        flags = self.sidecar.get("flags", {})
        raise InvalidRequest(
            "feeds",
            f"input shapes {dict(shapes)} fit no optimisation profile of {self.plan.name} (built "
            f"for max_batch={flags.get('max_batch')}, max_seq={flags.get('max_seq')}); rebuild "
            "with larger limits",
        )

    # ---- the Backend interface ------------------------------------------------------------
    def run(
        self,
        feeds: Mapping[str, np.ndarray | DeviceTensor],
        keep: Collection[str] = (),
        into: Mapping[str, DeviceTensor] | None = None,
    ) -> dict[str, np.ndarray | DeviceTensor]:
        if into:
            raise InvalidRequest(
                "into", "the TensorRT backend allocates its own outputs (shared KV buffers "
                "are an onnxruntime package feature)")
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise InvalidRequest(
                "feeds", f"{unknown} are not inputs of this engine ({self.input_names})"
            )
        values = {**self.defaults, **feeds}
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise InvalidRequest("feeds", f"missing inputs {missing}")
        shapes = {
            n: v.shape if isinstance(v, DeviceTensor) else tuple(np.shape(v))
            for n, v in values.items()
        }
        context = self._context_for(shapes)
        staged = []  # host arrays alive until the copies finish
        for name in self.input_names:
            value, dtype = values[name], self._dtypes[name]
            if isinstance(value, DeviceTensor):
                if value.dtype != dtype:
                    raise InvalidRequest(name, f"is {value.dtype}, the engine takes {dtype}")
                pointer = value.pointer
            else:
                host = np.ascontiguousarray(value, dtype=dtype)
                pointer = self._scratch.get(name, host.nbytes)
                self._cuda.memcpy_htod_async(pointer, host, self._stream)
                staged.append(host)
            if not context.set_input_shape(name, shapes[name]):
                raise InvalidRequest(name, f"shape {shapes[name]} is not accepted by the engine")
            context.set_tensor_address(name, pointer)
        outputs: dict[str, np.ndarray | DeviceTensor] = {}
        copies = []
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(
                    f"TensorRT could not infer the shape of output {name!r}: {shape}"
                )
            dtype = self._dtypes[name]
            if name in keep:
                tensor = DeviceTensor(shape, dtype)
                outputs[name], pointer = tensor, tensor.pointer
            else:
                host = np.empty(shape, dtype)
                pointer = self._scratch.get(name, host.nbytes)
                outputs[name] = host
                copies.append((host, pointer))
            context.set_tensor_address(name, pointer)
        with captured_errors() as errors:
            launched = context.execute_async_v3(self._stream)
        if not launched:
            raise RuntimeError(f"TensorRT execution failed: {'; '.join(errors) or 'no log'}")
        for host, pointer in copies:
            self._cuda.memcpy_dtoh_async(host, pointer, self._stream)
        self._cuda.stream_synchronize(self._stream)
        del staged
        return outputs

    def input_dtype(self, name: str) -> np.dtype:
        return self._dtypes[name]

    def max_batch(self, name: str) -> int:
        """The largest first dimension of input `name` that some optimisation profile takes."""
        profiles = range(max(1, self._engine.num_optimization_profiles))
        return max(int(self._engine.get_tensor_profile_shape(name, p)[2][0]) for p in profiles)

    def wrap(self, array: np.ndarray) -> DeviceTensor:
        raise InvalidRequest(
            "wrap", "the TensorRT backend keeps tensors in device memory; it cannot wrap "
            "a host array")

    def to_numpy(self, tensor: DeviceTensor) -> np.ndarray:
        host = np.empty(tensor.shape, tensor.dtype)
        self._cuda.memcpy_dtoh_async(host, tensor.pointer, self._stream)
        self._cuda.stream_synchronize(self._stream)
        return host

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._contexts.clear()
        self._scratch.clear()
        self._cuda.stream_destroy(self._stream)
