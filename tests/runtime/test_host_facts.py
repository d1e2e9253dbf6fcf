"""The host facts: parsers on real file formats, and the probes on this machine (no GPU,
no TensorRT, onnxruntime CPU), which must say what is missing instead of raising."""

from __future__ import annotations

import json

import pytest

from runtime import host_facts

# the formats L4T R36.4.3 (JetPack 6.2), an x86 and an ARM kernel write
NV_TEGRA_RELEASE_JP62 = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    "# KERNEL_VARIANT: oot\n"
    "TARGET_USERSPACE_LIB_DIR=nvidia\n"
)
CPUINFO_X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
CPUINFO_ARM = "processor\t: 0\nBogoMIPS\t: 62.50\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n"
MEMINFO = "MemTotal:        7620236 kB\nMemFree:         5200000 kB\nMemAvailable:    6100000 kB\n"


@pytest.mark.parametrize(
    ("text", "release", "jetpack"),
    [
        (NV_TEGRA_RELEASE_JP62, "36.4.3", "6.2"),
        ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic", "36.4.0", "6.1"),
        ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref", "35.4.1", "5.1.2"),
        ("# R38 (release), REVISION: 9, GCID: 1", "38.9.0", None),
        ("nothing like it", None, None),
    ],
)
def test_l4t_release_and_its_jetpack(text, release, jetpack):
    assert host_facts.l4t_release(text) == release
    assert host_facts.JETPACK_FOR_L4T.get(release or "") == jetpack


def test_cpu_model_and_memory_parsers():
    assert host_facts.cpu_model(CPUINFO_X86) == "AMD EPYC 7B13"
    assert host_facts.cpu_model(CPUINFO_ARM) is None  # the caller falls back to platform
    fields = host_facts.meminfo_bytes(MEMINFO)
    assert fields["MemTotal"] == 7620236 * 1024 and fields["MemAvailable"] == 6100000 * 1024


@pytest.mark.parametrize(("size", "value"), [("32768K", 32 << 20), ("4M", 4 << 20),
                                             ("512", 512), ("big", None)])
def test_cache_sizes_as_sysfs_writes_them(size, value):
    assert host_facts.cache_bytes(size) == value


def test_a_jetson_is_recognised_from_its_release_file(tmp_path, monkeypatch):
    monkeypatch.setattr(host_facts, "NV_TEGRA_RELEASE", tmp_path / "nv_tegra_release")
    monkeypatch.setattr(host_facts, "DEVICE_TREE_MODEL", tmp_path / "model")
    assert host_facts.jetson_facts() == {
        "is_jetson": False, "reason": f"{tmp_path / 'nv_tegra_release'} is absent"}
    (tmp_path / "nv_tegra_release").write_text(NV_TEGRA_RELEASE_JP62)
    (tmp_path / "model").write_text("NVIDIA Jetson Orin Nano Engineering Reference Kit\0")
    assert host_facts.jetson_facts() == {
        "is_jetson": True, "model": "NVIDIA Jetson Orin Nano Engineering Reference Kit",
        "l4t": "36.4.3", "jetpack": "6.2"}


def test_this_machine_is_described_without_raising():
    facts = host_facts.collect()
    json.dumps(facts)  # JSON-ready
    assert facts["cpu"]["cores"] >= 1 and facts["memory"]["total_bytes"] > 0
    assert facts["gpu"]["present"] or facts["gpu"]["reason"]
    for section in ("onnxruntime", "tensorrt", "cuda_python", "int4_kernel"):
        assert facts[section]["available"] or facts[section]["reason"]
    names = [source["name"] for source in facts["power"]["sources"]]
    assert names == ["tegrastats", "jtop", "hwmon", "nvml"]
    assert facts["power"]["auto"] in (*names, "none")


def test_benchmarks_record_the_short_machine_facts():
    assert set(host_facts.machine_facts()) == {"cpu", "cores", "machine", "python"}


def test_asking_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from runtime import host_facts; from runtime.backends import selection;"
        "import runtime.cli.doctor; host_facts.collect(); selection.BackendHost.probe();"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "sys.exit(', '.join(bad) or None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
