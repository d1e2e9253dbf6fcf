"""onnxruntime: the embedded default backend (CPU here; CUDA / TensorRT EPs on a Jetson)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.adapted_graph import AdaptedGraph
from runtime.backends.base import DeviceTensor
from runtime.backends.cpu_threads import apply_cpu_threads
from runtime.backends.device_buffer import BufferView, DeviceBuffer, host_copy
from runtime.backends.selection import names_providers
from runtime.errors import BackendUnavailable, PackageError

log = logging.getLogger(__name__)

# preferred order when the caller asks for "auto"
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def choose_providers(requested: Sequence[str] | None) -> list[str]:
    """The execution providers to use: the requested ones, or the best available."""
    import onnxruntime as ort

    return pick_providers(requested, ort.get_available_providers())


def pick_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """choose_providers over a given list of the providers onnxruntime has."""
    available = list(available)
    if not names_providers(requested):
        return [p for p in AUTO_PROVIDERS if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        hint = ""
        if set(missing) & set(GPU_PROVIDERS) and not _gpu_build_installed():
            hint = ("; onnxruntime-gpu is not installed (this onnxruntime is a CPU build): "
                    "pip install 'e2edge[gpu]', on a Jetson from the Jetson AI Lab index")
        raise BackendUnavailable(
            f"onnxruntime execution provider(s) {missing} not available here "
            f"(available: {available}){hint}"
        )
    return list(requested)


def _gpu_build_installed() -> bool:
    """Is the installed onnxruntime a GPU build (onnxruntime-gpu, or Jetson's wheel)?"""
    from importlib import metadata

    import onnxruntime as ort

    names = {d.metadata["Name"].lower() for d in metadata.distributions()
             if (d.metadata["Name"] or "").lower().startswith("onnxruntime")}
    return "onnxruntime-gpu" in names or ort.get_device() == "GPU"


class OnnxRuntimeBackend:
    """An InferenceSession over a package's model.onnx, run through IO binding."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int = 0, providers: Sequence[str] | None = None,
                 rewrite: Callable[[Any, list[str]], Any] | None = None, spin: bool = True):
        """`rewrite(model, providers)` may return an adapted onnx.ModelProto (external data
        not loaded: it stays in the package's files) or an AdaptedGraph (the same, plus
        weights in memory), or None to run the file as it is."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        apply_cpu_threads(options, threads, spin)  # cpu_threads.py: spin unless sharing
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about initializers the optimiser folded
        chosen = choose_providers(providers)
        source: str | bytes = str(onnx_path)
        adapted: AdaptedGraph | None = None  # with weights the session copies as it loads
        if rewrite is not None:
            import onnx

            adapted = rewrite(onnx.load(str(onnx_path), load_external_data=False), chosen)
            if adapted is not None:
                from runtime.kernels.library import register_if_used

                if not isinstance(adapted, AdaptedGraph):
                    adapted = AdaptedGraph(adapted)
                register_if_used(options, adapted.model)  # e2edge's own kernels, if any
                adapted.hand_over(options)
                source = adapted.model.SerializeToString()
                # From bytes, onnxruntime finds the external weights in the package folder.
                options.add_session_config_entry(
                    "session.model_external_initializers_file_folder_path",
                    str(Path(onnx_path).parent))
        try:
            self.session = ort.InferenceSession(source, options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise PackageError(f"{onnx_path}: onnxruntime cannot load it ({e})") from e
        if adapted is not None:
            adapted.release()  # copied into the session: held once from here on
        self.providers = self.session.get_providers()
        # Where a shared KV buffer lives: on the GPU when the CUDA provider runs the graph
        # (its GroupQueryAttention then reads and writes it in place), else a host array.
        self.kv_device = "cuda" if self.providers[0] in GPU_PROVIDERS else "cpu"
        self.kv_on_device = self.kv_device != "cpu"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._ort = ort
        log.info("onnxruntime session on %s with %s", onnx_path, self.providers)

    def run(
        self,
        feeds: Mapping[str, np.ndarray | DeviceTensor],
        keep: Collection[str] = (),
        into: Mapping[str, object] | None = None,
    ) -> dict[str, np.ndarray]:
        into = {} if into is None else into  # an empty ReusedOutputs still carries state
        returned = [name for name in self.output_names if name not in into]
        state = getattr(into, "backend_state", None)
        if state is not None and not keep:
            step = state.get(self)  # one per backend that runs with these outputs
            if step is None or step.input_names != tuple(feeds):
                step = state[self] = _StepBinding(self, into, tuple(feeds))
            return step.run(feeds, returned)
        binding = self._new_binding(into)
        for name, value in feeds.items():
            if isinstance(value, self._ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            elif isinstance(value, BufferView):
                _bind_view(binding.bind_input, name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in returned:
            binding.bind_output(name)  # onnxruntime allocates; nothing is copied back yet
        self.session.run_with_iobinding(binding)
        # Outputs come back in the order they were first bound: `into`'s, then the rest.
        order = [name for name in self.output_names if name in into] + returned
        outputs = dict(zip(order, binding.get_outputs()))
        return {name: outputs[name] if name in keep else outputs[name].numpy()
                for name in returned}

    def _new_binding(self, into: Mapping[str, object]):
        binding = self.session.io_binding()
        for name in self.output_names:
            if name not in into:
                continue
            if isinstance(into[name], BufferView):
                _bind_view(binding.bind_output, name, into[name])
            else:
                binding.bind_ortvalue_output(name, into[name])
        return binding

    def allocate(self, shape: tuple[int, ...], dtype=np.float32,
                 device: str | None = None) -> DeviceBuffer:
        """A zeroed buffer onnxruntime owns on `device` (default: where the KV buffer lives),
        bound by address (runtime/backends/device_buffer.py)."""
        device = device or self.kv_device
        zeros = np.zeros(shape, dtype=dtype)
        value = self._ort.OrtValue.ortvalue_from_numpy(zeros, device, 0)
        if device == "cpu":
            copy = host_copy
        else:
            from plugins_trt import cuda_driver  # cuda-python: copies within device memory

            copy = cuda_driver.memcpy_dtod
        return DeviceBuffer(value, value.data_ptr(), shape, zeros.dtype, device, 0, copy)

    def wrap(self, array: np.ndarray):
        """An OrtValue over the array's memory (CPU): onnxruntime writes land in the array."""
        if not array.flags.c_contiguous:
            raise ValueError("wrap() needs a C-contiguous array")
        return self._ort.OrtValue.ortvalue_from_numpy(array)

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.numpy()

    def input_dtype(self, name: str) -> np.dtype:
        (kind,) = [i.type for i in self.session.get_inputs() if i.name == name]
        return np.dtype(ORT_TYPES[kind])


def _bind_view(bind, name: str, view: BufferView) -> None:
    """IO binding by address: `bind` is a binding's bind_input or bind_output."""
    bind(name, view.device, view.device_id, view.dtype, list(view.shape), view.address)


class _StepBinding:
    """An IO binding that one caller's decode steps reuse (kept in ReusedOutputs).

    Host inputs are copied into arrays bound once, and the returned outputs land in
    arrays bound once, so a step with the shapes of the last one binds nothing and
    fetches nothing: it runs the session and copies the logits out. Each bind, and
    fetching every output's OrtValue afterwards, cost ~50-100 us per step, 5-10 % of a
    5 M-parameter model's decode step. A step with new shapes (the prefill, another
    batch) rebinds what changed and lets onnxruntime allocate its outputs once more.
    """

    def __init__(self, backend: OnnxRuntimeBackend, into: Mapping[str, object],
                 input_names: tuple[str, ...]):
        self.backend = backend
        self.input_names = input_names
        self.binding = backend._new_binding(into)
        self.into_names = [name for name in backend.output_names if name in into]
        self.inputs: dict[str, object] = {}  # name -> bound OrtValue or host array
        self.outputs: dict[str, np.ndarray] = {}  # returned outputs' arrays, when bound
        self.outputs_bound = False  # sized for the inputs as bound now (no input rebound)

    def run(self, feeds: Mapping[str, object], returned: list[str]) -> dict[str, np.ndarray]:
        ort = self.backend._ort
        for name, value in feeds.items():
            held = self.inputs.get(name)
            if isinstance(value, ort.OrtValue | BufferView):
                if held is not value:
                    if isinstance(value, BufferView):
                        _bind_view(self.binding.bind_input, name, value)
                    else:
                        self.binding.bind_ortvalue_input(name, value)
                    self.inputs[name] = value
                    self.outputs_bound = False
                continue
            value = np.asarray(value)
            if (isinstance(held, np.ndarray) and held.shape == value.shape
                    and held.dtype == value.dtype):
                np.copyto(held, value)  # the binding reads this array's memory
                continue
            held = np.array(value, order="C", copy=True)
            self.binding.bind_ortvalue_input(name, self.backend.wrap(held))
            self.inputs[name] = held
            self.outputs_bound = False  # a new shape or dtype: outputs may change size
        if self.outputs_bound:
            try:
                self.backend.session.run_with_iobinding(self.binding)
                return {name: self.outputs[name].copy() for name in returned}
            except Exception:  # noqa: BLE001 - an output whose shape follows input values
                # Rerunning the step is safe: it writes the same cache positions again.
                log.debug("bound outputs did not fit; letting onnxruntime allocate them")
        self.outputs_bound = False  # the outputs are onnxruntime's until sized again below
        for name in returned:
            self.binding.bind_output(name)  # onnxruntime allocates them this once
        self.backend.session.run_with_iobinding(self.binding)
        values = dict(zip(self.into_names + returned, self.binding.get_outputs()))
        result = {name: values[name].numpy() for name in returned}
        # Steps with these input shapes write their outputs into arrays of our own.
        self.outputs = {name: np.empty_like(result[name]) for name in returned}
        for name, array in self.outputs.items():
            self.binding.bind_ortvalue_output(name, self.backend.wrap(array))
        self.outputs_bound = True
        return result
