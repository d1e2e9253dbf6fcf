"""e2edge's CPU kernel library: onnxruntime custom ops compiled for this host on first use.

One shared library holds every op of the domain ai.e2edge: MatMulInt4Packed
(int4_matmul.c) and MatMulF32Packed (fp32_matmul.c), registered by custom_ops.c over
the slice of onnxruntime's C API in ort_custom_op.h. Built with the system's C compiler
(`cc`, or $CC) into the cache folder (cache_root(): $E2EDGE_CACHE_DIR, $XDG_CACHE_HOME or
~/.cache, then e2edge/kernels), under a name keyed by the sources, the compiler and the
machine, so an upgrade rebuilds and a second process reuses it. No compiler, or a failed
build: `load()` says why and the runtime keeps onnxruntime's own MatMulNBits and MatMul,
so a host without one loses speed, never a model.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = tuple(HERE / name for name in ("int4_matmul.c", "fp32_matmul.c", "custom_ops.c"))
HEADERS = (HERE / "ort_custom_op.h",)
DOMAIN = "ai.e2edge"
OP_TYPE = "MatMulInt4Packed"
FP32_OP_TYPE = "MatMulF32Packed"
COLUMNS = 16  # output columns per packed group (int4) or panel (fp32)
BLOCK = 32  # weights per block along K (MatMulNBits block_size)
GROUP_BYTES = 256  # one group's block: 16 columns x 32 weights x 4 bits
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c11")
LIBS = ("-lm",)  # after the sources: fmaf in the portable loops


@dataclass(frozen=True)
class KernelLibrary:
    """The compiled library: its path (for onnxruntime) and its ctypes handle."""

    path: Path
    handle: ctypes.CDLL

    @property
    def fast_path(self) -> bool:
        """Whether this CPU runs the AVX-512 VNNI kernel (the only one faster than
        onnxruntime's MatMulNBits; elsewhere the op's portable loop is correct but slow)."""
        return bool(self.handle.e2_int4_fast_path())

    @property
    def fp32_fast_path(self) -> bool:
        """Whether this CPU runs the AVX-512 fp32 kernel (elsewhere onnxruntime's MatMul is
        kept)."""
        return bool(self.handle.e2_fp32_fast_path())

    def pack(self, weights: np.ndarray, scales: np.ndarray, n: int, k: int
             ) -> tuple[np.ndarray, np.ndarray]:
        """MatMulNBits' B [N, K/32, 16] uint8 and scales [N * K/32] float32 -> the op's
        packed weights [groups, K/32, 256] uint8 and scales [groups, K/32, 16] float32."""
        weights, scales = _checked(weights, scales, n, k)
        groups, blocks = -(-n // COLUMNS), k // BLOCK
        packed = np.empty((groups, blocks, GROUP_BYTES), np.uint8)
        packed_scales = np.empty((groups, blocks, COLUMNS), np.float32)
        self.handle.e2_int4_pack(_ptr(weights), _ptr(scales), n, k, _ptr(packed),
                                 _ptr(packed_scales))
        return packed, packed_scales

    def matmul(self, a: np.ndarray, packed: np.ndarray, packed_scales: np.ndarray, n: int,
               fast: bool = True) -> np.ndarray:
        """a [M, K] float32 times the packed weights, on one thread (tests, checks);
        `fast` False runs the portable loop."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        m, k = a.shape
        y = np.empty((m, n), np.float32)
        code = self.handle.e2_int4_matmul(_ptr(a), m, k, _ptr(packed), _ptr(packed_scales), n,
                                          _ptr(y), int(fast))
        if code:
            raise ValueError(f"int4 matmul refused (code {code}): K={k} must be a multiple of "
                             f"{BLOCK}, and fast=True needs AVX-512 VNNI")
        return y

    def pack_fp32(self, weights: np.ndarray) -> np.ndarray:
        """A constant MatMul weight B [K, N] float32 -> the fp32 op's panels
        [ceil(N / 16), K, 16] float32 (columns past N zero)."""
        weights = np.ascontiguousarray(weights, dtype=np.float32)
        if weights.ndim != 2 or 0 in weights.shape:
            raise ValueError(f"fp32 packing needs a non-empty 2-D B [K, N], not {weights.shape}")
        k, n = weights.shape
        packed = np.empty((-(-n // COLUMNS), k, COLUMNS), np.float32)
        self.handle.e2_fp32_pack(_ptr(weights), k, n, _ptr(packed))
        return packed

    def matmul_fp32(self, a: np.ndarray, packed: np.ndarray, n: int, fast: bool = True
                    ) -> np.ndarray:
        """a [M, K] float32 times the packed panels, on one thread (tests, checks); `fast`
        False runs the portable loop."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        m, k = a.shape
        if packed.shape != (-(-n // COLUMNS), k, COLUMNS) or packed.dtype != np.float32:
            raise ValueError(f"fp32 matmul: packed panels {packed.shape} do not fit K={k}, N={n}")
        y = np.empty((m, n), np.float32)
        if self.handle.e2_fp32_matmul(_ptr(a), m, k, _ptr(packed), n, _ptr(y), int(fast)):
            raise ValueError("fp32 matmul refused: fast=True needs AVX-512")
        return y


def _checked(weights, scales, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    if k <= 0 or k % BLOCK or n <= 0:
        raise ValueError(f"int4 packing needs K a positive multiple of {BLOCK} and N > 0 "
                         f"(got K={k}, N={n})")
    weights = np.ascontiguousarray(weights, dtype=np.uint8)
    scales = np.ascontiguousarray(scales, dtype=np.float32)
    if weights.size != n * (k // BLOCK) * (BLOCK // 2) or scales.size != n * (k // BLOCK):
        raise ValueError(f"int4 packing: B has {weights.size} bytes and scales "
                         f"{scales.size} values, not what N={n}, K={k} needs")
    return weights, scales


def _ptr(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def cache_root() -> Path:
    """$E2EDGE_CACHE_DIR/kernels, else $XDG_CACHE_HOME/e2edge/kernels (the systemd unit's
    /var/cache/e2edge), else ~/.cache/e2edge/kernels."""
    root = os.environ.get("E2EDGE_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "e2edge")
    return Path(root) / "kernels"


def compiler() -> str | None:
    """The C compiler to build with: $CC, else cc / gcc / clang on PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _compiler_version(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines()[0] if done.stdout else cc


@functools.lru_cache(maxsize=1)
def load() -> KernelLibrary | str:
    """The library, built if needed; or, as a string, why there is none on this host."""
    cc = compiler()
    if cc is None:
        return "no C compiler found (set CC, or install gcc)"
    try:
        sources = [path.read_bytes() for path in (*SOURCES, *HEADERS)]
        key = hashlib.sha256(b"\0".join([*sources, _compiler_version(cc).encode(),
                                         platform.machine().encode(), " ".join(FLAGS).encode()]))
        target = cache_root() / f"libe2edge_kernels_{key.hexdigest()[:16]}.so"
        if not target.exists():
            _build(cc, target)
        handle = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        return f"e2edge's CPU kernels did not build or load ({e})"
    for name, result in (("e2_int4_fast_path", ctypes.c_int), ("e2_int4_pack", None),
                         ("e2_int4_matmul", ctypes.c_int), ("e2_fp32_fast_path", ctypes.c_int),
                         ("e2_fp32_pack", None), ("e2_fp32_matmul", ctypes.c_int)):
        getattr(handle, name).restype = result
    handle.e2_int4_pack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                    ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    handle.e2_int4_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_int]
    handle.e2_fp32_pack.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_void_p]
    handle.e2_fp32_matmul.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                      ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                      ctypes.c_int]
    return KernelLibrary(target, handle)


def unavailable(weights: str = "int4") -> str | None:
    """None when this host runs the fast `weights` ("int4" or "fp32") kernel, else why not
    (no compiler, a failed build, or a CPU without the instructions: AVX-512 VNNI for int4,
    AVX-512 for fp32, where onnxruntime's own kernels stay faster)."""
    library = load()
    if isinstance(library, str):
        return library
    if weights == "int4" and not library.fast_path:
        return "this CPU has no AVX-512 VNNI (onnxruntime's MatMulNBits is faster here)"
    if weights == "fp32" and not library.fp32_fast_path:
        return "this CPU has no AVX-512 (onnxruntime's MatMul is faster here)"
    return None


def _build(cc: str, target: Path) -> None:
    """Compile into a temporary file beside the target, then rename: concurrent first
    uses (two daemons, parallel tests) never see a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([cc, *FLAGS, "-o", str(built), *map(str, SOURCES), *LIBS],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise subprocess.SubprocessError(f"{cc} failed: {done.stderr.strip()[-2000:]}")
        os.replace(built, target)
    log.info("built e2edge's CPU kernel library %s", target)


def register_if_used(options, model) -> bool:
    """Register the library with onnxruntime session `options` when `model` (an
    onnx.ModelProto) has an op of its domain; True if it did."""
    if not any(opset.domain == DOMAIN for opset in model.opset_import):
        return False
    library = load()
    if isinstance(library, str):
        raise OSError(f"the model uses {DOMAIN} ops but {library}")
    options.register_custom_ops_library(str(library.path))
    return True
