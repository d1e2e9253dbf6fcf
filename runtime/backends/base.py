"""The one interface every inference backend implements.

The engines (LLM, vision) only talk to this; which device or library runs the
graph is the backend's business. Outputs named in `keep` stay in the backend's
own memory as opaque handles that can be fed straight back as inputs: this is
how the KV cache moves from one decode step to the next without a copy through
numpy. Outputs named in `into` are written into tensors the caller owns (a KV
buffer that past and present share, updated in place); when `into` is a
ReusedOutputs, the caller runs with it again and again, and a backend may keep
what it can reuse between those runs in its `backend_state`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Protocol

import numpy as np

DeviceTensor = Any  # a backend-native tensor handle (OrtValue, device buffer, ...)


class ReusedOutputs(dict):
    """Output tensors for `into` that one caller passes run after run (a KV buffer's
    view of its slots). `backend_state` lives and dies with the mapping: onnxruntime
    keeps its IO binding there, so a decode step binds only the inputs that changed
    (rebinding 2 x layers cache tensors every step cost ~8 % of a small model's step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backend_state: dict[Any, Any] = {}  # keyed as each backend likes


class Backend(Protocol):
    name: str  # "onnxruntime" | "tensorrt"
    providers: list[str]  # what actually executes, e.g. ["CPUExecutionProvider"]
    input_names: list[str]
    output_names: list[str]

    def run(
        self,
        feeds: Mapping[str, np.ndarray | DeviceTensor],
        keep: Collection[str] = (),
        into: Mapping[str, DeviceTensor] | None = None,
    ) -> dict[str, np.ndarray | DeviceTensor]:
        """Run the graph; outputs in `keep` come back as DeviceTensor, the rest as numpy.

        Outputs in `into` are written into the given tensors and not returned.
        """
        ...

    def wrap(self, array: np.ndarray) -> DeviceTensor:
        """A tensor over `array`'s own memory, for `into` (writes show in the array)."""
        ...

    def to_numpy(self, tensor: DeviceTensor) -> np.ndarray:
        """Copy a kept output to host memory (tests, debugging)."""
        ...

    def input_dtype(self, name: str) -> np.dtype:
        """The element type the graph takes for input `name`."""
        ...


def create_backend(name: str, onnx_path, *, threads: int = 0, providers=None, package=None,
                   rewrite=None, spin: bool = True):
    """Build a backend by name; imports its library only when asked for. `rewrite`
    (onnxruntime only) adapts the graph in memory once the providers are known; `spin`
    (onnxruntime only): its threads busy-wait between ops (cpu_threads.py)."""
    if name == "onnxruntime":
        from runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(onnx_path, threads=threads, providers=providers,
                                  rewrite=rewrite, spin=spin)
    if name == "tensorrt":
        from runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(package)
    from runtime.errors import ConfigError

    if name == "auto":
        raise ConfigError(
            "backend auto is chosen per model by runtime/backends/selection.py before a backend "
            "is made; `e2edge doctor --config FILE` shows the choice: configure that backend")
    raise ConfigError(f"backend {name!r} is not one of: onnxruntime, tensorrt")
