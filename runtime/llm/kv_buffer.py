"""A preallocated KV cache that past and present share (GroupQueryAttention packages).

One buffer per layer and part, (slots, kv_heads, capacity, head_dim), float32 (float16
where the graph's attention runs in fp16, as on the CUDA provider): slot b holds
sequence b's keys/values at positions 0 .. its length - 1. The graph reads the past
and writes the new positions in place, so a decode step copies no cache at all
(the concat graph copies the whole cache every step). Slots are rows of one buffer, so
rows 0..B-1 are one contiguous view that a batched decode step runs on.

Where the buffer lives follows the backend: a numpy array on the CPU provider, device
memory bound by address when onnxruntime's CUDA provider runs the graph
(`backend.kv_on_device`; runtime/backends/device_buffer.py), so a GPU decode step
moves no cache between host and device either.
"""

from __future__ import annotations

import numpy as np

from runtime.backends.base import Backend, DeviceTensor, ReusedOutputs


class SharedKVBuffer:
    def __init__(self, layout, backend: Backend, slots: int, capacity: int):
        if slots < 1 or capacity < 1:
            raise ValueError(f"a KV buffer needs slots >= 1 and capacity >= 1, got "
                             f"{slots}, {capacity}")
        self.slots = slots
        self.capacity = capacity
        self._backend = backend
        self._names = layout.cache_names()  # (past input, present output)
        self._shape = (slots, layout.num_kv_heads, capacity, layout.head_dim)
        input_dtype = getattr(backend, "input_dtype", None)
        self.dtype = np.dtype(input_dtype(self._names[0][0]) if input_dtype else np.float32)
        self.on_device = bool(getattr(backend, "kv_on_device", False))
        if self.on_device:  # (slots, kv_heads, capacity, head_dim) in device memory
            self.buffers = {past: backend.allocate(self._shape, self.dtype)
                            for past, _ in self._names}
        else:
            # np.zeros maps untouched pages lazily: memory is used as sequences grow
            self.arrays = {past: np.zeros(self._shape, dtype=self.dtype)
                           for past, _ in self._names}
        self._views: dict[tuple[int, int], tuple[dict, dict]] = {}

    @property
    def nbytes(self) -> int:
        return len(self._names) * int(np.prod(self._shape)) * self.dtype.itemsize

    def bindings(self, first: int, count: int) -> tuple[dict[str, DeviceTensor], dict]:
        """(past feeds, present outputs) over slots first .. first + count - 1."""
        key = (first, count)
        if key not in self._views:
            if not 0 <= first and first + count <= self.slots:
                raise ValueError(f"slots {first}..{first + count - 1} outside 0..{self.slots - 1}")
            if self.on_device:
                tensors = {past: self.buffers[past].rows(first, count) for past, _ in self._names}
            else:
                tensors = {past: self._backend.wrap(self.arrays[past][first:first + count])
                           for past, _ in self._names}
            presents = ReusedOutputs({present: tensors[past] for past, present in self._names})
            self._views[key] = (tensors, presents)
        return self._views[key]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy slot `source`'s first `length` positions into slot `target`."""
        if not self.on_device:
            for array in self.arrays.values():
                array[target, :, :length] = array[source, :, :length]
            return
        _, heads, capacity, head_dim = self._shape
        position_bytes = head_dim * self.dtype.itemsize
        for buffer in self.buffers.values():
            for head in range(heads):  # each head's positions are contiguous in its slot
                offset = (head * capacity) * position_bytes
                buffer.copy_bytes(source * buffer.row_bytes + offset,
                                  target * buffer.row_bytes + offset, length * position_bytes)
