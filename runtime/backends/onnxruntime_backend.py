"""onnxruntime: the embedded default backend (CPU here; CUDA / TensorRT EPs on a Jetson)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from runtime.backends.base import DeviceTensor
from runtime.errors import BackendUnavailable, PackageError

log = logging.getLogger(__name__)

# preferred order when the caller asks for "auto"
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: Sequence[str] | None) -> list[str]:
    """The execution providers to use: the requested ones, or the best available."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not requested or list(requested) == ["auto"]:
        return [p for p in AUTO_PROVIDERS if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise BackendUnavailable(
            f"onnxruntime execution provider(s) {missing} not available here "
            f"(available: {available})"
        )
    return list(requested)


class OnnxRuntimeBackend:
    """An InferenceSession over a package's model.onnx, run through IO binding."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int = 0, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about initializers the optimiser folded
        chosen = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise PackageError(f"{onnx_path}: onnxruntime cannot load it ({e})") from e
        self.providers = self.session.get_providers()
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
        into = into or {}
        reused = self._reused_binding(feeds, into)
        binding, bound = reused if reused is not None else (self._new_binding(into), {})
        for name, value in feeds.items():
            if isinstance(value, self._ort.OrtValue):
                if bound.get(name) is not value:  # a reused binding holds it already
                    binding.bind_ortvalue_input(name, value)
                    bound[name] = value
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
                bound.pop(name, None)
        returned = [name for name in self.output_names if name not in into]
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
            if name in into:
                binding.bind_ortvalue_output(name, into[name])
        return binding

    def _reused_binding(self, feeds: Mapping[str, object], into: Mapping[str, object]):
        """(binding, inputs bound to OrtValues) kept in a ReusedOutputs' state, or None.

        The binding is rebuilt when the set of inputs changes, so no input is ever left
        bound to a host array of an earlier run.
        """
        state = getattr(into, "backend_state", None)
        if state is None:
            return None
        names = tuple(feeds)
        kept = state.get(self)  # one binding per backend that runs with these outputs
        if kept is None or kept[0] != names:
            kept = state[self] = (names, self._new_binding(into), {})
        return kept[1], kept[2]

    def wrap(self, array: np.ndarray):
        """An OrtValue over the array's memory (CPU): onnxruntime writes land in the array."""
        if not array.flags.c_contiguous:
            raise ValueError("wrap() needs a C-contiguous array")
        return self._ort.OrtValue.ortvalue_from_numpy(array)

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.numpy()
