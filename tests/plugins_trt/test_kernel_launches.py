"""Every launch the Python launchers make, checked against the kernels' compiled PTX: the
entry exists, the argument count and sizes match its parameters, the block size is its
__launch_bounds__, the grid covers the work and stays in CUDA's limits, workspace pointers
stay inside the workspace and dynamic shared memory within what the GPU allows; the kernel
chosen follows the compute capability and the tokens. No GPU here, so the driver's launch is
recorded instead of executed; the kernels' arithmetic is checked on a GPU (`e2edge bench
kernels` and tests/e2edge/test_bench_kernels_gpu.py)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from plugins_trt import cuda_driver, kernels, mma_tiles
from plugins_trt.nvrtc_compiler import KERNEL_DIR

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed (PTX needed)")
_PARAM_BYTES = {"u64": 8, "s64": 8, "b64": 8, "f64": 8, "u32": 4, "s32": 4, "b32": 4, "f32": 4}


@pytest.fixture(scope="module")
def entries(tmp_path_factory) -> dict[str, tuple[list[int], int]]:
    """PTX entry name -> (parameter sizes, maxntid) for every kernel source."""
    out = tmp_path_factory.mktemp("ptx")
    found = {}
    for source in kernels.kernel_names():
        ptx = out / f"{source}.ptx"
        subprocess.run(
            [NVCC, "-ptx", "-arch=sm_87", "-std=c++14", "-o", str(ptx), str(KERNEL_DIR / source)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        text = ptx.read_text()
        pattern = r"\.entry\s+(\w+)\(\s*(.*?)\)\s*\.maxntid\s+(\d+)"
        for name, params, maxntid in re.findall(pattern, text, re.S):
            sizes = [_PARAM_BYTES[t] for t in re.findall(r"\.param\s+\.(\w+)", params)]
            found[name] = (sizes, int(maxntid))
    return found


# what the launchers ask a GPU: Xavier, an Orin, an H100
XAVIER = cuda_driver.GpuInfo("Xavier", 7, 2, 0, 0, multiprocessors=8, shared_memory_optin=98304)
ORIN = cuda_driver.GpuInfo("Orin", 8, 7, 0, 0, multiprocessors=16, shared_memory_optin=166912)
H100 = cuda_driver.GpuInfo("H100", 9, 0, 0, 0, multiprocessors=132, shared_memory_optin=232448)


class Recorder(kernels.KernelLibrary):
    """Hands out kernel names instead of loaded functions, for a GPU described by `gpu`."""

    def __init__(self, gpu: cuda_driver.GpuInfo = XAVIER):
        super().__init__()
        self.gpu = gpu

    def device(self) -> cuda_driver.GpuInfo:
        return self.gpu

    def function(self, source: str, name: str, dynamic_shared: int = 0) -> str:
        assert name in kernels.kernel_names()[source]
        if source == kernels.MMA_SOURCE:
            assert self.gpu.cc >= mma_tiles.TENSOR_CORE_MIN_CC, "sm_80 code on an older GPU"
        assert dynamic_shared <= self.gpu.shared_memory_optin
        return name


@pytest.fixture
def launches(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def record(function, grid, block, args, stream=0, shared_bytes=0, what=""):
        calls.append(
            {"name": function, "grid": grid, "block": block, "args": list(args),
             "shared": shared_bytes}
        )

    def record_memset(pointer, value, count, stream):
        calls.append({"name": "memset", "pointer": pointer, "count": count})

    monkeypatch.setattr(cuda_driver, "launch", record)
    monkeypatch.setattr(cuda_driver, "memset_d8_async", record_memset)
    monkeypatch.setattr(cuda_driver, "memset_d32_async", record_memset)
    return calls


def _check_against_ptx(call: dict, entries: dict) -> None:
    sizes, maxntid = entries[call["name"]]
    args = call["args"]
    assert [np.asarray(a).itemsize for a in args] == sizes, call["name"]
    assert all(isinstance(a, (np.uint64, np.int32)) for a in args)
    assert call["block"] == (maxntid, 1, 1), call["name"]
    gx, gy, gz = call["grid"]
    assert 1 <= gx < 2**31 and 1 <= gy <= 65535 and 1 <= gz <= 65535, call


X, WORDS, SCALES, Y, WS = 1 << 32, 2 << 32, 3 << 32, 4 << 32, 5 << 32


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 100])
def test_ternary_launches_match_the_kernels(entries, launches, dtype, m):
    """Xavier (sm_72): the GEMV, the tiled kernel and the W2A8 GEMV, as before sm_80."""
    geometry = kernels.TernaryGeometry(K=1000, N=300, block_size=64)
    for path, bits in (("auto", 16), ("gemv", 16), ("tiled", 16), ("auto", 8)):
        launches.clear()
        ws_bytes = kernels.ternary_workspace_bytes(m, geometry, bits)
        taken = kernels.launch_ternary_matmul(
            x=X,
            words=WORDS,
            scales=SCALES,
            y=Y,
            M=m,
            geometry=geometry,
            dtype=dtype,
            activation_bits=bits,
            workspace=WS if ws_bytes else 0,
            path=path,
            library=Recorder(),
        )
        for call in launches:
            _check_against_ptx(call, entries)
        main = launches[-1]
        gx, gy, _ = main["grid"]
        shape = [int(a) for a in main["args"][-5:]]  # M, K, N, words per row, log2 block words
        assert shape[:3] == [m, 1000, 300]
        assert int(main["args"][-2]) == geometry.words_per_row == 64
        assert 2 ** int(main["args"][-1]) * 16 == 64  # words per block, as a shift
        if taken in ("gemv", "w2a8"):
            mt = int(main["name"].rsplit("_m", 1)[1])
            assert mt >= min(m, 8) and gy * mt >= m
            assert gx * kernels.GEMV_ROWS_PER_BLOCK[mt] >= 300
        else:
            assert taken == "tiled" and gx * 64 >= 300 and gy * 64 >= m
        if bits == 8:
            quantize, gemv = launches
            assert quantize["name"].startswith("quantize_int8") and quantize["grid"][0] == m
            xq, token_scale = int(gemv["args"][0]), int(gemv["args"][1])
            assert xq == WS and xq + m * geometry.k_pad <= token_scale
            assert token_scale + 4 * m <= WS + ws_bytes
            assert [int(a) for a in quantize["args"][:3]] == [X, xq, token_scale]
        assert taken == (
            "w2a8"
            if bits == 8
            else "tiled"
            if path == "tiled" or (path == "auto" and m > 8)
            else "gemv"
        )


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("m", [1, 2, 40])
@pytest.mark.parametrize("mode", ["prefix", "indices", "device_width"])
def test_sparse_ffn_launches_match_the_kernels(entries, launches, dtype, m, mode):
    d, f = 2048, 700
    n_active = {"prefix": 333, "indices": 650, "device_width": f}[mode]
    ws_bytes = kernels.sparse_ffn_workspace_bytes(m, d, f, dtype)
    kernels.launch_sparse_ffn(
        x=X,
        w_gate=WORDS,
        w_up=SCALES,
        w_down=Y + 8,
        y=Y,
        M=m,
        D=d,
        F=f,
        activation="silu",
        dtype=dtype,
        n_active=n_active,
        workspace=WS,
        indices=7 if mode == "indices" else 0,
        width=9 if mode == "device_width" else 0,
        library=Recorder(),
    )
    kernel_calls = [c for c in launches if c["name"] != "memset"]
    for call in kernel_calls:
        _check_against_ptx(call, entries)
    up, down = kernel_calls[:2]
    assert up["name"].startswith("sparse_ffn_gate_up") and down["name"].startswith(
        "sparse_ffn_down"
    )
    assert up["grid"][0] * kernels.FFN_WARPS >= n_active
    assert down["grid"][0] * kernels.DOWN_COLS >= d
    assert down["grid"][1] * kernels.DOWN_SLICE >= n_active
    tok_up, tok_down = (int(c["name"].rsplit("_t", 1)[1]) for c in (up, down))
    assert up["grid"][1] * tok_up >= m and down["grid"][2] * tok_down >= m
    h, acc, counter = (int(a) for a in up["args"][6:9])
    assert h == WS and h + 4 * m * n_active <= WS + ws_bytes
    if dtype == "float32":
        assert acc == Y  # accumulates in place
    else:
        assert h + 4 * m * f <= acc and acc + 4 * m * d <= counter
    assert counter + 4 <= WS + ws_bytes
    assert [int(a) for a in down["args"][:1]] == [h] and int(down["args"][5]) == acc
    converts_in_kernel = int(down["args"][6]) != 0
    if dtype == "float16":
        assert converts_in_kernel == (m * d <= kernels.CONVERT_IN_KERNEL_MAX)
        assert (kernel_calls[-1]["name"] == "f32_to_f16") == (not converts_in_kernel)
    else:
        assert not converts_in_kernel and len(kernel_calls) == 2


def test_sparse_ffn_with_nothing_active_only_zeroes_the_output(launches):
    kernels.launch_sparse_ffn(
        x=X,
        w_gate=X,
        w_up=X,
        w_down=X,
        y=Y,
        M=3,
        D=100,
        F=50,
        activation="gelu_tanh",
        dtype="float16",
        n_active=0,
        workspace=WS,
        library=Recorder(),
    )
    assert launches == [{"name": "memset", "pointer": Y, "count": 3 * 100 * 2}]


@pytest.mark.parametrize("gpu", [ORIN, H100], ids=["orin", "h100"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize(
    ("m", "k", "n", "block_size"),
    [(16, 1000, 300, 64), (37, 1003, 77, 32), (1024, 512, 2048, 128), (1024, 2048, 512, 128),
     (16384, 512, 2048, 128), (2048, 8192, 2048, 128), (100, 4096, 96, 256)],
)
def test_tensor_core_launches_match_the_kernels(entries, launches, gpu, dtype, bits, m, k, n,
                                                block_size):
    geometry = kernels.TernaryGeometry(K=k, N=n, block_size=block_size)
    taken = kernels.launch_ternary_matmul(
        x=X, words=WORDS, scales=SCALES, y=Y, M=m, geometry=geometry, dtype=dtype,
        activation_bits=bits, workspace=WS, library=Recorder(gpu),
    )
    if bits == 16 and dtype == "float32":  # no tensor-core fp32 kernel: the CUDA-core one
        assert taken == "tiled" and launches[-1]["name"] == "ternary_gemm_f32"
        return
    assert taken == ("mma" if bits == 16 else "mma_w2a8")
    (call,) = launches  # one launch: W2A8 quantises in the kernel's prologue
    _check_against_ptx(call, entries)
    kind = "f16" if bits == 16 else f"w2a8_{'f16' if dtype == 'float16' else 'f32'}"
    assert call["name"].startswith(f"ternary_mma_{kind}_")
    tiles = mma_tiles.W2A16_TILES if bits == 16 else mma_tiles.W2A8_TILES
    tile = tiles[call["name"].rsplit("_", 1)[1]]
    assert tile == mma_tiles.choose_tile(tiles, m, n, gpu.multiprocessors)
    gx, gy, _ = call["grid"]
    shape = [int(a) for a in call["args"][4:9]]
    assert shape == [m, k, n, geometry.words_per_row, geometry.words_per_block_log2]
    assert gy * tile.bm >= m > (gy - 1) * tile.bm
    n_tiles = -(-n // tile.bn)
    if bits == 16:
        assert gx == n_tiles and call["shared"] == mma_tiles.w2a16_smem_bytes(tile)
        return
    kchunk = int(call["args"][9])
    k_span = mma_tiles.w2a8_k_span(-(-k // 16))
    assert kchunk % mma_tiles.W2A8_STAGE_K == 0 and 0 < kchunk <= k_span
    assert call["shared"] == mma_tiles.w2a8_smem_bytes(tile, kchunk)
    assert call["shared"] <= gpu.shared_memory_optin
    assert 1 <= gx <= n_tiles  # each CTA walks N tiles blockIdx.x, + gridDim.x, ...
    if kchunk < k_span:  # rows quantised again for every tile: one tile per CTA
        assert gx == n_tiles


@pytest.mark.parametrize("m", [1, 8, 9, 15])
def test_fewer_than_16_tokens_keep_the_gemv_and_tiled_kernels_on_sm_80(launches, m):
    geometry = kernels.TernaryGeometry(K=512, N=256, block_size=64)
    for bits, want in ((16, "gemv" if m <= 8 else "tiled"), (8, "w2a8")):
        launches.clear()
        taken = kernels.launch_ternary_matmul(
            x=X, words=WORDS, scales=SCALES, y=Y, M=m, geometry=geometry, dtype="float16",
            activation_bits=bits, workspace=WS, library=Recorder(H100),
        )
        assert taken == want
        assert not any(c["name"].startswith("ternary_mma") for c in launches)


def test_path_choice_by_compute_capability_tokens_and_blocks():
    choose = kernels.choose_ternary_path
    for cc in (72, 75):  # Xavier, Turing: no sm_80 tensor-core instructions
        assert choose(1024, "float16", 16, 128, cc) == "tiled"
        assert choose(1024, "float16", 8, 128, cc) == "w2a8"
        with pytest.raises(ValueError, match="sm_80"):
            choose(1024, "float16", 16, 128, cc, path="mma")
    for cc in (80, 87, 90):
        assert choose(16, "float16", 16, 16, cc) == "mma"
        assert choose(16, "float32", 16, 128, cc) == "tiled"  # fp32 activations: CUDA cores
        assert choose(16, "float32", 8, 128, cc) == "mma_w2a8"
        assert choose(16, "float16", 8, 16, cc) == "w2a8"  # a k32 step would span two blocks
        assert choose(15, "float16", 16, 128, cc) == "tiled"
        assert choose(8, "float16", 16, 128, cc) == "gemv"
        assert choose(0, "float16", 16, 128, cc) == "empty"
        assert choose(9, "float16", 16, 128, cc, path="mma") == "mma"
    with pytest.raises(ValueError, match="not the tiled"):
        choose(64, "float16", 8, 128, 90, path="tiled")


def test_w2a8_workspace_is_for_the_tokens_that_take_the_gemv():
    geometry = kernels.TernaryGeometry(K=2048, N=512, block_size=128)
    full = kernels.ternary_workspace_bytes(16384, geometry, 8)  # GPU not known: every M
    assert full == kernels.ternary_workspace_bytes(16384, geometry, 8, cc=72)
    assert full >= 16384 * geometry.k_pad
    few = kernels.ternary_workspace_bytes(16384, geometry, 8, cc=87)
    assert few == kernels.ternary_workspace_bytes(15, geometry, 8, cc=87) < full
    assert kernels.ternary_workspace_bytes(8, geometry, 8, cc=87) < few
    small_blocks = kernels.TernaryGeometry(K=2048, N=512, block_size=16)
    assert kernels.ternary_workspace_bytes(16384, small_blocks, 8, cc=90) >= 16384 * 2048
    assert kernels.ternary_workspace_bytes(16384, geometry, 16, cc=90) == 0
