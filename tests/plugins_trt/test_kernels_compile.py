"""Every kernel compiles for Orin (sm_87) and Hopper (sm_90) with nvcc, without register
spills, and with NVRTC through plugins_trt.nvrtc_compiler (the run-time path), and exports
the entry points the launchers ask for. No GPU needed. (CUDA 13 cannot target Xavier's sm_72
any more; packed_ternary_matmul.cu and sparse_ffn.cu keep to sm_70 PTX and header-free code
so JetPack 5's NVRTC accepts them; ternary_mma.cu is sm_80+ and only loaded there.)"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest

from plugins_trt import kernels, mma_tiles
from plugins_trt.nvrtc_compiler import KERNEL_DIR, KernelCompileError, choose_target, kernel_sources

NVCC = shutil.which("nvcc")
ARCHS = ("sm_87", "sm_90")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", kernel_sources())
def test_nvcc_compiles_kernel(source, arch, tmp_path):
    cubin = tmp_path / f"{source}.{arch}.cubin"
    result = subprocess.run(
        [
            NVCC,
            "-cubin",
            f"-arch={arch}",
            "-std=c++14",
            "-Werror",
            "all-warnings",
            "-Xptxas",
            "-v",
            "-o",
            str(cubin),
            str(KERNEL_DIR / source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    image = cubin.read_bytes()
    assert image[:4] == b"\x7fELF"
    for name in kernels.kernel_names()[source]:
        assert name.encode() in image, f"{name} missing from {source}"
    usage = re.findall(
        r"Function properties for (\w+)\n\s+\d+ bytes stack frame, (\d+) bytes spill stores, "
        r"(\d+) bytes spill loads",
        result.stderr,
    )
    assert {name for name, _, _ in usage} >= set(kernels.kernel_names()[source])
    spilling = [name for name, stores, loads in usage if int(stores) or int(loads)]
    assert not spilling, f"register spills in {spilling}"


def test_kernel_sources_are_header_free():
    """NVRTC on a bare machine has no CUDA headers: only our own may be included."""
    for path in KERNEL_DIR.glob("*.cu*"):
        includes = re.findall(r'#include\s+[<"]([^>"]+)[>"]', path.read_text())
        assert set(includes) <= {"common.cuh"}, f"{path.name} includes {includes}"


def test_gemv_table_matches_the_kernel_source():
    text = (KERNEL_DIR / kernels.TERNARY_SOURCE).read_text()
    variants = {
        int(mt): int(r) for mt, r in re.findall(r"^GEMV_VARIANTS\((\d+), (\d+)\)", text, re.M)
    }
    assert variants == kernels.GEMV_ROWS_PER_BLOCK


def _tile_lines(macro: str) -> dict[str, mma_tiles.MmaTile]:
    text = (KERNEL_DIR / kernels.MMA_SOURCE).read_text()
    found = re.findall(rf"^{macro}\((\d+), (\d+), (\d+), (\d+), (\d+)\)$", text, re.M)
    tiles = [mma_tiles.MmaTile(*map(int, values)) for values in found]
    return {t.name: t for t in tiles}


def test_tensor_core_tile_tables_match_the_kernel_source():
    assert _tile_lines("W2A16_TILE") == mma_tiles.W2A16_TILES
    assert _tile_lines("W2A8_TILE") == mma_tiles.W2A8_TILES


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_tensor_core_shared_memory_is_what_the_launcher_gives(tmp_path):
    """The kernels trap when handed fewer bytes than their layout needs; the launcher's
    formulas (mma_tiles) must be the kernels' own, checked here by the compiler."""
    checks = [f'#include "{KERNEL_DIR / kernels.MMA_SOURCE}"']
    for t in mma_tiles.W2A16_TILES.values():
        tile = f"W2A16Tile<{t.bm}, {t.bn}, {t.warps_m}, {t.warps_n}, {t.stages}>"
        checks.append(f"static_assert({tile}::SMEM_BYTES == {mma_tiles.w2a16_smem_bytes(t)}, "
                      f'"{tile} shared memory");')
        checks.append(f'static_assert({tile}::THREADS == {t.threads}, "{tile} threads");')
    for t in mma_tiles.W2A8_TILES.values():
        tile = f"W2A8Tile<{t.bm}, {t.bn}, {t.warps_m}, {t.warps_n}, {t.stages}>"
        for kchunk in (128, 1024):
            checks.append(
                f"static_assert({tile}::smem_bytes({kchunk}) == "
                f'{mma_tiles.w2a8_smem_bytes(t, kchunk)}, "{tile} shared memory");'
            )
        checks.append(f'static_assert({tile}::THREADS == {t.threads}, "{tile} threads");')
    source = tmp_path / "layout_check.cu"
    source.write_text("\n".join(checks) + "\n")
    result = subprocess.run(
        [NVCC, "-c", "-fdevice-syntax-only", "-arch=sm_87", "-std=c++14", "-o", os.devnull,
         str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_nvrtc_target_choice():
    archs = [75, 80, 86, 87, 89, 90]
    assert choose_target(87, archs) == "sm_87"
    assert choose_target(100, archs) == "compute_90"  # newer GPU: PTX the driver JITs
    with pytest.raises(KernelCompileError, match="none of which runs on sm_72"):
        choose_target(72, archs)


@pytest.mark.skipif(
    importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
    reason="cuda-python (cuda.bindings) is not installed",
)
def test_nvrtc_compiles_and_caches(tmp_path):
    from plugins_trt.nvrtc_compiler import compile_kernel

    for source in kernel_sources():
        first = compile_kernel(source, 87, cache_dir=tmp_path)
        assert first.target == "sm_87" and first.image[:4] == b"\x7fELF"
        for name in kernels.kernel_names()[source]:
            assert name.encode() in first.image
        stamp = first.cache_file.stat().st_mtime_ns
        again = compile_kernel(source, 87, cache_dir=tmp_path)
        assert again.image == first.image and again.cache_file.stat().st_mtime_ns == stamp
    cubins = [p.parent.name for p in tmp_path.rglob("*.cubin")]
    assert cubins == ["sm_87"] * len(kernel_sources())


@pytest.mark.skipif(
    importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
    reason="cuda-python (cuda.bindings) is not installed",
)
def test_nvrtc_failure_raises_with_the_log(tmp_path, monkeypatch):
    from plugins_trt import nvrtc_compiler

    broken = tmp_path / "kernels"
    broken.mkdir()
    (broken / "common.cuh").write_text("")
    (broken / "broken.cu").write_text('extern "C" __global__ void k() { undefined_thing(); }\n')
    monkeypatch.setattr(nvrtc_compiler, "KERNEL_DIR", broken)
    with pytest.raises(KernelCompileError, match="undefined_thing"):
        nvrtc_compiler.compile_kernel("broken.cu", 87, use_cache=False)
