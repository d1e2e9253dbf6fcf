"""A preallocated KV cache that past and present share (GroupQueryAttention packages).

One float32 array per layer and part, (slots, kv_heads, capacity, head_dim): slot b
holds sequence b's keys/values at positions 0 .. its length - 1. The graph reads the
past and writes the new positions in place, so a decode step copies no cache at all
(the concat graph copies the whole cache every step). Slots are rows of one array, so
rows 0..B-1 are one contiguous view that a batched decode step runs on.
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
        shape = (slots, layout.num_kv_heads, capacity, layout.head_dim)
        # np.zeros maps untouched pages lazily: memory is used as sequences grow
        self.arrays = {past: np.zeros(shape, dtype=np.float32) for past, _ in self._names}
        self._views: dict[tuple[int, int], tuple[dict, dict]] = {}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def bindings(self, first: int, count: int) -> tuple[dict[str, DeviceTensor], dict]:
        """(past feeds, present outputs) over slots first .. first + count - 1."""
        key = (first, count)
        if key not in self._views:
            if not 0 <= first and first + count <= self.slots:
                raise ValueError(f"slots {first}..{first + count - 1} outside 0..{self.slots - 1}")
            tensors = {past: self._backend.wrap(self.arrays[past][first:first + count])
                       for past, _ in self._names}
            presents = ReusedOutputs({present: tensors[past] for past, present in self._names})
            self._views[key] = (tensors, presents)
        return self._views[key]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy slot `source`'s first `length` positions into slot `target`."""
        for array in self.arrays.values():
            array[target, :, :length] = array[source, :, :length]
