"""Buffers a backend owns on its device, bound to a graph by address.

A shared KV buffer on the GPU (onnxruntime's CUDA provider) cannot be a numpy array:
it lives in device memory, past and present name the same bytes, and a decode step
over slots first .. first + count - 1 binds a slice of it. onnxruntime's IO binding
takes (device, element type, shape, address), so a slice along the first axis is just
an offset into the buffer: no copy, no framework tensor type.

    buffer = backend.allocate((slots, heads, capacity, head_dim), np.float32)
    view = buffer.rows(first, count)      # BufferView: bind as input and as output
    buffer.copy_bytes(source_offset, target_offset, nbytes)   # within the buffer

The same code runs with device "cpu" (onnxruntime-owned host memory), which is how it
is tested on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BufferView:
    """Rows of a DeviceBuffer as a graph input or output: what IO binding needs."""

    device: str  # "cpu" | "cuda"
    device_id: int
    dtype: np.dtype
    shape: tuple[int, ...]
    address: int


def host_copy(target: int, source: int, nbytes: int) -> None:
    ctypes.memmove(target, source, nbytes)


class DeviceBuffer:
    """A zeroed (rows, ...) buffer held by `value` (the backend's handle, kept alive here)."""

    def __init__(self, value: Any, address: int, shape: tuple[int, ...], dtype: np.dtype,
                 device: str, device_id: int, copy: Callable[[int, int, int], None]):
        self.value = value  # owns the memory (an OrtValue for onnxruntime)
        self.address = address
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.device = device
        self.device_id = device_id
        self._copy = copy  # (target address, source address, bytes)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.shape[0]

    def rows(self, first: int, count: int) -> BufferView:
        """Rows first .. first + count - 1: contiguous, because rows are the outer axis."""
        if first < 0 or count < 1 or first + count > self.shape[0]:
            raise ValueError(f"rows {first}..{first + count - 1} outside 0..{self.shape[0] - 1}")
        return BufferView(self.device, self.device_id, self.dtype,
                          (count, *self.shape[1:]), self.address + first * self.row_bytes)

    def copy_bytes(self, source_offset: int, target_offset: int, nbytes: int) -> None:
        """Copy `nbytes` within the buffer (the ranges must not overlap)."""
        if min(source_offset, target_offset) < 0 or \
                max(source_offset, target_offset) + nbytes > self.nbytes:
            raise ValueError("copy outside the buffer")
        self._copy(self.address + target_offset, self.address + source_offset, nbytes)
