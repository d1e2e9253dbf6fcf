"""A package's graph as rewritten at load, with weights that live in memory.

A load-time rewrite (fp16 attention, the int4 kernel's packed weights) yields a new
onnx.ModelProto, which onnxruntime reads from bytes; its untouched initializers stay
external data in the package's files. New weights are not serialised into it (the bytes,
the parsed graph and the session would each hold a copy while it loads): each is
declared as external data at a placeholder location and handed over as a numpy array
through `SessionOptions.add_external_initializers`, which copies it into the session
as the graph loads; the arrays may go once the session exists (onnxruntime's C API
documents this), so the weights end up held once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

IN_MEMORY = "e2edge-in-memory"  # the placeholder location; no such file is ever read


@dataclass
class AdaptedGraph:
    model: Any  # onnx.ModelProto, external data not loaded
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    handed_over: list = field(default_factory=list)  # the OrtValues, until release()

    def add_weight(self, name: str, array: np.ndarray) -> None:
        """Declare `array` as initializer `name` of the graph; its bytes stay in memory
        until the session is built."""
        from onnx import TensorProto, helper

        array = np.ascontiguousarray(array)
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                             dims=array.shape, data_location=TensorProto.EXTERNAL)
        for key, value in (("location", IN_MEMORY), ("offset", "0"),
                           ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.model.graph.initializer.append(tensor)
        self.weights[name] = array

    def hand_over(self, options) -> list:
        """Give onnxruntime session `options` the in-memory weights; returns the
        OrtValues, which this graph keeps until release() (after the session exists)."""
        if not self.weights:
            return []
        import onnxruntime as ort

        self.handed_over = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.weights.values()]
        options.add_external_initializers(list(self.weights), self.handed_over)
        return self.handed_over

    def release(self) -> None:
        """Once the session exists (it copied them): drop the arrays and their OrtValues,
        and give their memory back to the system. Without the trim a rewritten fp32
        package stayed ~400 MiB larger: glibc raises its mmap threshold after the first
        large free, so the later arrays came from the heap, and freed heap memory is kept
        by the process."""
        self.handed_over.clear()
        self.weights.clear()
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only
            libc.malloc_trim(0)
