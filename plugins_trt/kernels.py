"""Launchers for the e2edge kernels on raw device pointers (shared by plugins and tests).

The TensorRT plugins call these from `enqueue` with TensorRT's pointers and stream; the
GPU tests and `e2edge bench kernels` call them through e2edge.bench.kernels_torch with
torch tensors. Shapes follow plugins_trt/reference.py, which is the specification of each
launcher:

    launch_ternary_matmul   Y (M, N) = X (M, K) @ dequant(words, scales).T
        words  (N, K_pad / 16) int32/uint32: the package's packed uint8 bytes, 16 codes a word
        scales (N, n_blocks) float32
        which kernel runs is choose_ternary_path(): by compute capability and tokens M
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
from plugins_trt import mma_tiles as mma
from plugins_trt.nvrtc_compiler import compile_kernel
from plugins_trt.plugin_spec import FFN_ACTIVATIONS
from runtime.ternary_layout import check_block_size, padded_k

TERNARY_SOURCE = "packed_ternary_matmul.cu"
MMA_SOURCE = "ternary_mma.cu"  # sm_80+ only: never compiled for an older GPU
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
STATIC_SHARED_LIMIT = 48 << 10  # more dynamic shared memory needs the function's opt-in
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
        self._shared_opt_in: dict[tuple[int, str, str], int] = {}
        self._devices: dict[int, cuda_driver.GpuInfo] = {}

    def device(self) -> cuda_driver.GpuInfo:
        """The current context's GPU (compute capability, SMs, shared memory), asked once."""
        context = cuda_driver.ensure_context()
        info = self._devices.get(context)
        if info is None:
            info = self._devices[context] = cuda_driver.gpu_info()
        return info

    def function(self, source: str, name: str, dynamic_shared: int = 0) -> Any:
        """The loaded entry point; `dynamic_shared` bytes above 48 KiB are opted into once."""
        context = cuda_driver.ensure_context()
        key = (context, source, name)
        found = self._functions.get(key)
        if found is None:
            with self._lock:
                module = self._modules.get((context, source))
                if module is None:
                    compiled = compile_kernel(source, self.device().cc, self.cache_dir)
                    module = cuda_driver.load_module(compiled.image, compiled.is_ptx)
                    self._modules[(context, source)] = module
                found = self._functions[key] = cuda_driver.get_function(module, name)
        if dynamic_shared > max(STATIC_SHARED_LIMIT, self._shared_opt_in.get(key, 0)):
            cuda_driver.set_max_dynamic_shared(found, dynamic_shared)
            self._shared_opt_in[key] = dynamic_shared
        return found

    def preload(self) -> None:
        """Compile and load the modules this GPU runs now, so the first inference pays
        nothing (the tensor-core one on sm_80+ only)."""
        self.function(TERNARY_SOURCE, "ternary_gemv_f16_m1")
        self.function(FFN_SOURCE, "f32_to_f16")
        if self.device().cc >= mma.TENSOR_CORE_MIN_CC:
            self.function(MMA_SOURCE, "ternary_mma_f16_128x128")


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
    tensor_core = [f"ternary_mma_f16_{name}" for name in mma.W2A16_TILES]
    for t in ("f16", "f32"):
        tensor_core += [f"ternary_mma_w2a8_{t}_{name}" for name in mma.W2A8_TILES]
    return {TERNARY_SOURCE: ternary, MMA_SOURCE: tensor_core, FFN_SOURCE: ffn}


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


PATHS = ("auto", "gemv", "tiled", "mma")


def choose_ternary_path(
    M: int, dtype: str, activation_bits: int, block_size: int, cc: int, path: str = "auto"
) -> str:
    """Which kernel runs Y = X @ dequant(W).T: "gemv", "tiled", "w2a8" (the GEMV on int8
    activations), "mma" or "mma_w2a8" (tensor cores), or "empty" for M = 0.

    auto: on sm_80+ (cc >= 80) M >= 16 tokens take the tensor-core kernels (W2A16 for fp16
    activations; W2A8 for fp16 or fp32 when blocks are >= 32 wide); otherwise what ran before
    them: the GEMV for M <= 8, the tiled kernel above (W2A8: the GEMV in chunks of 8 tokens).
    Xavier (sm_72) and Turing (sm_75) never reach the tensor-core source. "gemv", "tiled" and
    "mma" force one (tests and benchmarks), and raise where it cannot run.
    """
    _suffix(dtype)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if activation_bits not in (16, 8):
        raise ValueError(f"activation_bits must be 16 or 8, got {activation_bits}")
    if M < 0:
        raise ValueError(f"M must be >= 0, got {M}")
    if M == 0:
        return "empty"
    tensor_cores = cc >= mma.TENSOR_CORE_MIN_CC
    if activation_bits == 8:
        eligible = tensor_cores and block_size >= mma.W2A8_MIN_BLOCK
        if path == "mma" and not eligible:
            raise ValueError(
                f"the W2A8 tensor-core kernel needs sm_{mma.TENSOR_CORE_MIN_CC}+ and blocks of "
                f">= {mma.W2A8_MIN_BLOCK} (this is sm_{cc}, block_size {block_size})"
            )
        if path == "tiled":
            raise ValueError("W2A8 runs the GEMV or the tensor-core kernel, not the tiled one")
        if path == "mma" or (path == "auto" and eligible and M >= mma.MIN_TOKENS):
            return "mma_w2a8"
        return "w2a8"
    eligible = tensor_cores and dtype == "float16"
    if path == "mma" and not eligible:
        raise ValueError(
            f"the W2A16 tensor-core kernel needs fp16 activations and sm_{mma.TENSOR_CORE_MIN_CC}+ "
            f"(this is {dtype} on sm_{cc})"
        )
    if path == "auto":
        if eligible and M >= mma.MIN_TOKENS:
            return "mma"
        return "gemv" if M <= GEMV_MAX_TOKENS else "tiled"
    return path


def ternary_workspace_bytes(
    M: int, geometry: TernaryGeometry, activation_bits: int, cc: int = 0
) -> int:
    """Scratch for the W2A8 GEMV: int8 activations (M, K_pad) then one float scale per token.

    With the GPU's compute capability `cc`, only token counts that take the GEMV count (the
    tensor-core W2A8 kernel quantises in its prologue and needs none); cc = 0 (not known)
    sizes for the GEMV at every M.
    """
    if activation_bits == 16:
        return 0
    if activation_bits != 8:
        raise ValueError(f"activation_bits must be 16 or 8, got {activation_bits}")
    if cc and choose_ternary_path(M, "float16", 8, geometry.block_size, cc) == "mma_w2a8":
        M = mma.MIN_TOKENS - 1  # the most tokens that still take the GEMV
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
    tile: str | None = None,
    library: KernelLibrary = LIBRARY,
) -> str:
    """Y = X @ dequant(W).T on `stream`; returns the path taken (choose_ternary_path()).

    The GEMV W2A8 path needs `workspace` of ternary_workspace_bytes(); `tile` forces one of
    mma_tiles' tiles on the tensor-core paths (benchmarks sweep them), else the table picks.
    """
    suffix = _suffix(dtype)
    g = geometry
    cc = library.device().cc if M > 0 else 0
    taken = choose_ternary_path(M, dtype, activation_bits, g.block_size, cc, path)
    if taken == "empty":
        return taken
    if tile is not None and not taken.startswith("mma"):
        raise ValueError(f"a tile is chosen for the tensor-core paths only, not {taken!r}")
    shape_args = [
        np.int32(M),
        np.int32(g.K),
        np.int32(g.N),
        np.int32(g.words_per_row),
        np.int32(g.words_per_block_log2),
    ]
    args = [_ptr(x), _ptr(words), _ptr(scales), _ptr(y), *shape_args]
    if taken.startswith("mma"):
        _launch_mma(args, M, g, suffix, taken == "mma_w2a8", tile, stream, library)
        return taken
    if taken == "w2a8":
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
        return taken
    if taken == "gemv":
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
        return taken
    threads = 128 if suffix == "f16" else 256
    cuda_driver.launch(
        library.function(TERNARY_SOURCE, f"ternary_gemm_{suffix}"),
        (-(-g.N // TILE), -(-M // TILE), 1),
        (threads, 1, 1),
        args,
        stream,
        what="ternary_gemm",
    )
    return taken


def _launch_mma(
    args: list, M: int, g: TernaryGeometry, suffix: str, w2a8: bool, tile: str | None,
    stream: int, library: KernelLibrary,
) -> None:
    """The tensor-core kernels: a tile from mma_tiles' table (or `tile`), its grid and its
    dynamic shared memory; W2A8 also gets the K chunk of quantised rows kept resident."""
    gpu = library.device()
    sms = gpu.multiprocessors or 1
    tiles = mma.W2A8_TILES if w2a8 else mma.W2A16_TILES
    t = mma.tile_named(tiles, tile) if tile else mma.choose_tile(tiles, M, g.N, sms)
    m_blocks = -(-M // t.bm)
    if m_blocks > 65535:
        raise ValueError(f"M = {M} tokens is more than one launch covers with {t.name} tiles")
    if w2a8:
        k_span = mma.w2a8_k_span(min(g.words_per_row, -(-g.K // 16)))
        kchunk = mma.w2a8_kchunk(t, k_span, gpu.shared_memory_optin or STATIC_SHARED_LIMIT)
        grid = (mma.w2a8_grid_x(t, M, g.N, sms, resident=kchunk == k_span), m_blocks, 1)
        shared = mma.w2a8_smem_bytes(t, kchunk)
        name, args = f"ternary_mma_w2a8_{suffix}_{t.name}", [*args, np.int32(kchunk)]
    else:
        grid = (-(-g.N // t.bn), m_blocks, 1)
        shared = mma.w2a16_smem_bytes(t)
        name = f"ternary_mma_f16_{t.name}"
    cuda_driver.launch(
        library.function(MMA_SOURCE, name, dynamic_shared=shared),
        grid,
        (t.threads, 1, 1),
        args,
        stream,
        shared_bytes=shared,
        what=name,
    )


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
