"""Launchers for the e2edge kernels on raw device pointers (shared by plugins and tests).

The TensorRT plugins call these from `enqueue` with TensorRT's pointers and stream; the
GPU tests and `e2edge bench kernels` call them through e2edge.bench.kernels_torch with
torch tensors. Shapes follow plugins_trt/reference.py, which is the specification of each
launcher:

    launch_ternary_matmul   Y (M, N) = X (M, K) @ dequant(words, scales).T
        words  (N, K_pad / 16) int32/uint32: the package's packed uint8 bytes, 16 codes a word
        scales (N, n_blocks) float32
    launch_sparse_ffn       Y (M, D) = gated FFN over the active neurons only

Nothing is compiled or loaded at import; a KernelLibrary compiles each .cu with NVRTC on
first use (cached on disk) and loads it once per CUDA context.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plugins_trt import cuda_driver
from plugins_trt.nvrtc_compiler import compile_kernel
from plugins_trt.plugin_spec import FFN_ACTIVATIONS
from runtime.ternary_layout import check_block_size, padded_k

TERNARY_SOURCE = "packed_ternary_matmul.cu"
FFN_SOURCE = "sparse_ffn.cu"

GEMV_THREADS = 128
GEMV_MAX_TOKENS = 8
# tokens per block -> output rows per block; the GEMV_VARIANTS lines of the .cu say the same
GEMV_ROWS_PER_BLOCK = {1: 4, 2: 4, 4: 2, 8: 2}
TILE = 64
QUANTIZE_THREADS = 256
FFN_THREADS = 256
ACTIVATIONS = {name: code for code, name in enumerate(FFN_ACTIVATIONS)}  # sparse_ffn.cu codes
DTYPES = ("float16", "float32")
_ALIGN = 256


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _ptr(value: int) -> np.uint64:
    return np.uint64(int(value))


class KernelLibrary:
    """Compiled modules per CUDA context; functions looked up once and kept."""

    def __init__(self, cache_dir: Path | str | None = None):
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._modules: dict[tuple[int, str], Any] = {}
        self._functions: dict[tuple[int, str, str], Any] = {}

    def function(self, source: str, name: str) -> Any:
        context = cuda_driver.ensure_context()
        key = (context, source, name)
        found = self._functions.get(key)
        if found is not None:
            return found
        with self._lock:
            module = self._modules.get((context, source))
            if module is None:
                compiled = compile_kernel(source, cuda_driver.gpu_info().cc, self.cache_dir)
                module = cuda_driver.load_module(compiled.image, compiled.is_ptx)
                self._modules[(context, source)] = module
            function = cuda_driver.get_function(module, name)
            self._functions[key] = function
            return function

    def preload(self) -> None:
        """Compile and load both modules now, so the first inference pays nothing."""
        self.function(TERNARY_SOURCE, "ternary_gemv_f16_m1")
        self.function(FFN_SOURCE, "f32_to_f16")


LIBRARY = KernelLibrary()


def kernel_names() -> dict[str, list[str]]:
    """Every extern "C" entry point the launchers below may ask each source for."""
    ternary = ["ternary_gemm_f16", "ternary_gemm_f32", "quantize_int8_f16", "quantize_int8_f32"]
    for mt in GEMV_ROWS_PER_BLOCK:
        for kind in ("f16", "f32", "w2a8_f16", "w2a8_f32"):
            ternary.append(f"ternary_gemv_{kind}_m{mt}")
    ffn = ["f32_to_f16"]
    for t in ("f16", "f32"):
        ffn += [f"sparse_ffn_gate_up_{t}_t1", f"sparse_ffn_gate_up_{t}_t8"]
        ffn += [f"sparse_ffn_down_{t}_t1", f"sparse_ffn_down_{t}_t4"]
    return {TERNARY_SOURCE: ternary, FFN_SOURCE: ffn}


def _suffix(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return "f16" if dtype == "float16" else "f32"


# ---- packed ternary matmul ---------------------------------------------------------------
@dataclass(frozen=True)
class TernaryGeometry:
    """The packed layout's sizes for a K x N weight in blocks of block_size."""

    K: int
    N: int
    block_size: int

    def __post_init__(self) -> None:
        check_block_size(self.block_size)
        if self.K <= 0 or self.N <= 0:
            raise ValueError(f"K and N must be positive, got K={self.K}, N={self.N}")

    @property
    def k_pad(self) -> int:
        return padded_k(self.K, self.block_size)

    @property
    def words_per_row(self) -> int:
        return self.k_pad // 16

    @property
    def words_per_block_log2(self) -> int:
        """log2 of block_size / 16: the kernels find a word's block with a shift."""
        return (self.block_size // 16).bit_length() - 1


def ternary_workspace_bytes(M: int, geometry: TernaryGeometry, activation_bits: int) -> int:
    """Scratch for W2A8: int8 activations (M, K_pad) then one float scale per token."""
    if activation_bits == 16:
        return 0
    if activation_bits != 8:
        raise ValueError(f"activation_bits must be 16 or 8, got {activation_bits}")
    return _align(M * geometry.k_pad) + _align(4 * M)


def _gemv_tokens(M: int) -> int:
    """Tokens per GEMV block: the smallest variant that covers M (8 for larger M)."""
    for mt in sorted(GEMV_ROWS_PER_BLOCK):
        if M <= mt:
            return mt
    return GEMV_MAX_TOKENS


def launch_ternary_matmul(
    *,
    x: int,
    words: int,
    scales: int,
    y: int,
    M: int,
    geometry: TernaryGeometry,
    dtype: str,
    stream: int = 0,
    activation_bits: int = 16,
    workspace: int = 0,
    path: str = "auto",
    library: KernelLibrary = LIBRARY,
) -> str:
    """Y = X @ dequant(W).T on `stream`; returns the path taken ("gemv", "tiled", "w2a8").

    path: "auto" takes the GEMV for M <= 8 and the tiled kernel above; "gemv" / "tiled"
    force one (tests use this to check both on one shape). W2A8 always runs the GEMV (in
    chunks of 8 tokens) and needs `workspace` of ternary_workspace_bytes().
    """
    suffix = _suffix(dtype)
    if path not in ("auto", "gemv", "tiled"):
        raise ValueError(f"path must be auto, gemv or tiled, got {path!r}")
    if M < 0:
        raise ValueError(f"M must be >= 0, got {M}")
    if M == 0:
        return "empty"
    g = geometry
    shape_args = [
        np.int32(M),
        np.int32(g.K),
        np.int32(g.N),
        np.int32(g.words_per_row),
        np.int32(g.words_per_block_log2),
    ]
    if activation_bits == 8:
        if not workspace:
            raise ValueError("W2A8 needs a workspace of ternary_workspace_bytes()")
        xq, token_scale = workspace, workspace + _align(M * g.k_pad)
        cuda_driver.launch(
            library.function(TERNARY_SOURCE, f"quantize_int8_{suffix}"),
            (M, 1, 1),
            (QUANTIZE_THREADS, 1, 1),
            [_ptr(x), _ptr(xq), _ptr(token_scale), np.int32(g.K), np.int32(g.k_pad)],
            stream,
            what="quantize_int8",
        )
        mt = _gemv_tokens(M)
        rows = GEMV_ROWS_PER_BLOCK[mt]
        cuda_driver.launch(
            library.function(TERNARY_SOURCE, f"ternary_gemv_w2a8_{suffix}_m{mt}"),
            (-(-g.N // rows), -(-M // mt), 1),
            (GEMV_THREADS, 1, 1),
            [_ptr(xq), _ptr(token_scale), _ptr(words), _ptr(scales), _ptr(y), *shape_args],
            stream,
            what="ternary_gemv_w2a8",
        )
        return "w2a8"
    if activation_bits != 16:
        raise ValueError(f"activation_bits must be 16 or 8, got {activation_bits}")
    use_gemv = path == "gemv" or (path == "auto" and M <= GEMV_MAX_TOKENS)
    args = [_ptr(x), _ptr(words), _ptr(scales), _ptr(y), *shape_args]
    if use_gemv:
        mt = _gemv_tokens(M)
        rows = GEMV_ROWS_PER_BLOCK[mt]
        cuda_driver.launch(
            library.function(TERNARY_SOURCE, f"ternary_gemv_{suffix}_m{mt}"),
            (-(-g.N // rows), -(-M // mt), 1),
            (GEMV_THREADS, 1, 1),
            args,
            stream,
            what="ternary_gemv",
        )
        return "gemv"
    threads = 128 if suffix == "f16" else 256
    cuda_driver.launch(
        library.function(TERNARY_SOURCE, f"ternary_gemm_{suffix}"),
        (-(-g.N // TILE), -(-M // TILE), 1),
        (threads, 1, 1),
        args,
        stream,
        what="ternary_gemm",
    )
    return "tiled"


# ---- sparse gated FFN ----------------------------------------------------------------------
FFN_WARPS = 8  # gate/up kernel: one active neuron per warp
DOWN_COLS = 256  # down kernel: columns per block
DOWN_SLICE = 64  # down kernel: active neurons per block
CONVERT_IN_KERNEL_MAX = 1 << 16  # fp16 outputs up to this size are converted by the last block


def _ffn_layout(M: int, D: int, F: int, dtype: str) -> tuple[int, int, int]:
    """(accumulator offset, counter offset, total bytes) of the workspace: H (M, F) fp32
    products at 0, then the fp32 accumulator (M, D) for fp16 outputs, then the down
    kernel's finished-block counter."""
    h_bytes = _align(4 * M * max(F, 1))
    acc_bytes = _align(4 * M * D) if _suffix(dtype) == "f16" else 0
    return h_bytes, h_bytes + acc_bytes, h_bytes + acc_bytes + _ALIGN


def sparse_ffn_workspace_bytes(M: int, D: int, F: int, dtype: str) -> int:
    """Scratch for launch_sparse_ffn with up to F active neurons."""
    return _ffn_layout(M, D, F, dtype)[2]


def launch_sparse_ffn(
    *,
    x: int,
    w_gate: int,
    w_up: int,
    w_down: int,
    y: int,
    M: int,
    D: int,
    F: int,
    activation: str,
    dtype: str,
    n_active: int,
    workspace: int,
    indices: int = 0,
    width: int = 0,
    stream: int = 0,
    library: KernelLibrary = LIBRARY,
) -> None:
    """Y = gated FFN of X over the active neurons (see sparse_ffn.cu for the layouts).

    indices: device int32 (n_active,) neuron ids, or 0 for the prefix 0..n_active-1.
    width:   device int32 (1,) prefix width read on the GPU (clamped to [0, F]), or 0; the
             grid is sized for n_active and blocks past the width do no loads.
    workspace: sparse_ffn_workspace_bytes(M, D, F, dtype) bytes.
    """
    suffix = _suffix(dtype)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if min(D, F) <= 0 or M < 0:
        raise ValueError(f"bad FFN shape M={M}, D={D}, F={F}")
    if not 0 <= n_active <= F:
        raise ValueError(f"n_active must be in [0, {F}], got {n_active}")
    if indices and width:
        raise ValueError("give either an index list or a device width, not both")
    if not workspace:
        raise ValueError("the sparse FFN needs a workspace of sparse_ffn_workspace_bytes()")
    if M == 0:
        return
    if n_active == 0:  # nothing active: the FFN adds nothing
        cuda_driver.memset_d8_async(y, 0, M * D * (2 if suffix == "f16" else 4), stream)
        return
    acc_offset, counter_offset, _ = _ffn_layout(M, D, F, dtype)
    h = workspace
    accumulator = y if suffix == "f32" else workspace + acc_offset
    counter = workspace + counter_offset
    convert_here = suffix == "f16" and M * D <= CONVERT_IN_KERNEL_MAX
    stride = n_active  # H's row length (and the grid's width), the same in both kernels
    tokens_up = 1 if M == 1 else 8
    cuda_driver.launch(
        library.function(FFN_SOURCE, f"sparse_ffn_gate_up_{suffix}_t{tokens_up}"),
        (-(-n_active // FFN_WARPS), -(-M // tokens_up), 1),
        (FFN_THREADS, 1, 1),
        [
            _ptr(x),
            _ptr(w_gate),
            _ptr(w_up),
            _ptr(indices),
            _ptr(width),
            np.int32(stride),
            _ptr(h),
            _ptr(accumulator),
            _ptr(counter),
            np.int32(M),
            np.int32(D),
            np.int32(F),
            np.int32(ACTIVATIONS[activation]),
        ],
        stream,
        what="sparse_ffn_gate_up",
    )
    tokens_down = 1 if M == 1 else 4
    cuda_driver.launch(
        library.function(FFN_SOURCE, f"sparse_ffn_down_{suffix}_t{tokens_down}"),
        (-(-D // DOWN_COLS), -(-n_active // DOWN_SLICE), -(-M // tokens_down)),
        (FFN_THREADS, 1, 1),
        [
            _ptr(h),
            _ptr(w_down),
            _ptr(indices),
            _ptr(width),
            np.int32(stride),
            _ptr(accumulator),
            _ptr(y if convert_here else 0),
            _ptr(counter),
            np.int32(M),
            np.int32(D),
            np.int32(F),
        ],
        stream,
        what="sparse_ffn_down",
    )
    if suffix == "f16" and not convert_here:
        n = M * D
        cuda_driver.launch(
            library.function(FFN_SOURCE, "f32_to_f16"),
            (min(-(-n // 256), 4096), 1, 1),
            (256, 1, 1),
            [_ptr(accumulator), _ptr(y), np.int32(n)],
            stream,
            what="f32_to_f16",
        )
