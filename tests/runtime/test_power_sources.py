"""The other power sources (hwmon, jtop, NVML, none), auto selection, the sampler, the
power log and the `power:` config."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from runtime.errors import BackendUnavailable, ConfigError
from runtime.power.config import PowerConfig
from runtime.power.energy import EnergyMeter
from runtime.power.hwmon import HwmonSource, find_ina3221_channels
from runtime.power.jtop_source import JtopSource, sample_from_jtop_power
from runtime.power.monitor import PowerMonitor
from runtime.power.none_source import NoneSource
from runtime.power.nvml import NvmlSource
from runtime.power.power_log import PowerLog
from runtime.power.sample import PowerSample
from runtime.power.sampler import PowerSampler
from runtime.power.sources import detect_source, open_source


def make_ina3221(root: Path, index: int, channels: dict[int, tuple[str, int, int]]) -> Path:
    """hwmon<index> with name ina3221 and channel k -> (label, mV, mA), like JetPack 5+."""
    device = root / f"hwmon{index}"
    device.mkdir(parents=True)
    (device / "name").write_text("ina3221\n")
    for k, (label, millivolts, milliamps) in channels.items():
        (device / f"in{k}_label").write_text(label + "\n")
        (device / f"in{k}_input").write_text(f"{millivolts}\n")
        (device / f"curr{k}_input").write_text(f"{milliamps}\n")
    return device


@pytest.fixture
def orin_nano_hwmon(tmp_path) -> Path:
    root = tmp_path / "hwmon"
    make_ina3221(
        root,
        1,
        {1: ("VDD_IN", 5072, 1000), 2: ("VDD_CPU_GPU_CV", 4968, 240), 3: ("VDD_SOC", 4968, 272)},
    )
    chip = root / "hwmon1"
    (chip / "in7_label").write_text("sum of shunt voltages\n")  # no current of its own
    (chip / "in7_input").write_text("120\n")
    other = root / "hwmon0"  # a temperature sensor: not a power monitor
    other.mkdir()
    (other / "name").write_text("tmp451\n")
    return root


def test_hwmon_reads_ina3221_rails_as_volts_times_amps(orin_nano_hwmon):
    channels = find_ina3221_channels(orin_nano_hwmon)
    assert [c.rail for c in channels] == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    source = HwmonSource(interval_ms=10, root=orin_nano_hwmon)
    with source:
        first = source.next_sample(timeout=1.0)
        (orin_nano_hwmon / "hwmon1" / "curr1_input").write_text("2000\n")
        second = source.next_sample(timeout=1.0)
    assert first.rails_mw == {
        "VDD_IN": 5072.0,
        "VDD_CPU_GPU_CV": 4968 * 240 / 1000,
        "VDD_SOC": 4968 * 272 / 1000,
    }
    assert first.total_mw == 5072.0  # the input rail, not the sum
    assert second.total_mw == 10144.0
    assert 0.005 < second.t - first.t < 0.5


def test_hwmon_without_input_rail_sums_and_skips_unconnected_channels(tmp_path):
    root = tmp_path / "hwmon"  # AGX Orin: two chips, no VDD_IN
    make_ina3221(
        root, 3, {1: ("VDD_GPU_SOC", 843, 6170), 2: ("VDD_CPU_CV", 780, 3437),
                  3: ("VIN_SYS_5V0", 4968, 953)},
    )
    make_ina3221(root, 4, {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 1800, 341)})
    source = HwmonSource(interval_ms=100, root=root)
    source.start()
    sample = source.read()
    source.stop()
    assert set(sample.rails_mw) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    expected = (843 * 6170 + 780 * 3437 + 4968 * 953 + 1800 * 341) / 1000
    assert sample.total_mw == pytest.approx(expected)


def test_hwmon_without_a_monitor_is_a_clear_error(tmp_path):
    with pytest.raises(BackendUnavailable, match="no INA3221"):
        HwmonSource(interval_ms=100, root=tmp_path).start()


def test_auto_falls_back_to_hwmon_then_to_what_is_left(tmp_path, monkeypatch, orin_nano_hwmon):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no tegrastats
    if importlib.util.find_spec("jtop") is not None:
        pytest.skip("jetson-stats is installed here: auto may pick jtop")
    assert detect_source(orin_nano_hwmon) == "hwmon"
    assert isinstance(open_source("auto", 100, hwmon_root=orin_nano_hwmon), HwmonSource)
    left = detect_source(tmp_path / "no-hwmon")
    assert left in ("nvml", "none")  # nvml only where a GPU reports its power
    if left == "none":
        assert isinstance(open_source("auto", 100, hwmon_root=tmp_path), NoneSource)


def test_jtop_power_dict_becomes_a_sample_with_the_input_rail_put_back():
    power = {  # the shape jtop().power has on an Orin Nano
        "rail": {
            "VDD_CPU_GPU_CV": {"volt": 4968, "curr": 240, "power": 1192, "avg": 1150},
            "VDD_SOC": {"volt": 4968, "curr": 272, "power": 1351, "avg": 1340},
        },
        "tot": {"power": 5073, "avg": 5100, "name": "VDD_IN"},
    }
    sample = sample_from_jtop_power(power, t=12.5)
    assert sample.rails_mw == {"VDD_CPU_GPU_CV": 1192.0, "VDD_SOC": 1351.0, "VDD_IN": 5073.0}
    assert sample.total_mw == 5073.0 and sample.t == 12.5
    with pytest.raises(BackendUnavailable, match="no power rails"):
        sample_from_jtop_power({}, t=0.0)


def test_jtop_missing_package_is_a_clear_error():
    if importlib.util.find_spec("jtop") is not None:
        pytest.skip("jetson-stats is installed here")
    with pytest.raises(BackendUnavailable, match="jetson-stats is not installed"):
        JtopSource(interval_ms=100).start()


def test_nvml_reads_power_or_says_why_not():
    source = NvmlSource(interval_ms=50)
    try:
        source.start()
    except BackendUnavailable as e:  # no GPU, no driver, or no nvidia-ml-py here
        assert "power source nvml" in str(e)
        return
    try:
        first = source.next_sample(timeout=1.0)
        second = source.next_sample(timeout=1.0)
    finally:
        source.stop()
    assert first.total_mw > 0 and set(first.rails_mw) == {
        f"GPU{i}" for i in range(len(source.gpu_names))
    }
    if source.has_energy_counter:
        assert second.energy_counter_j >= first.energy_counter_j


def test_sampler_ring_is_bounded_and_measures_the_idle_median(tmp_path):
    root = tmp_path / "hwmon"
    make_ina3221(root, 0, {1: ("VDD_IN", 5000, 600)})  # 3 W
    source = HwmonSource(interval_ms=10, root=root)
    sampler = PowerSampler(source, history_s=0.2)
    assert sampler.capacity == 21
    seen: list[PowerSample] = []
    sampler.add_listener(seen.append)
    sampler.add_listener(lambda sample: 1 / 0)  # a broken listener does not stop the rest
    sampler.start(idle_window_s=0.1)
    try:
        assert sampler.idle_mw == 3000.0
        time.sleep(0.4)
    finally:
        sampler.stop()
    assert len(sampler.samples()) == sampler.capacity < len(seen)
    assert sampler.errors >= 1
    window = sampler.samples(seen[-10].t, seen[-5].t, bracket=False)
    assert [s.t for s in window] == [s.t for s in seen[-10:-4]]
    assert sampler.energy_total_j == pytest.approx(3.0 * (seen[-1].t - seen[0].t), rel=1e-9)


def test_power_log_writes_json_lines_and_rotates_by_size(tmp_path):
    path = tmp_path / "logs" / "power.jsonl"
    sample = PowerSample(t=time.monotonic(), total_mw=5073.0, rails_mw={"VDD_IN": 5073.0},
                         cpu_load_pct=12.5, temperatures_c={"cpu": 50.2})
    with PowerLog(path, max_bytes=600, backups=2) as log:
        for i in range(20):
            log.write(sample, active_ids=[f"req-{i}"])
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["power.jsonl", "power.jsonl.1", "power.jsonl.2"]
    for name in files:
        assert (path.parent / name).stat().st_size <= 600
    last = [json.loads(line) for line in path.read_text().splitlines()][-1]
    assert last["active"] == ["req-19"]
    assert last["rails_mw"] == {"VDD_IN": 5073.0} and last["total_mw"] == 5073.0
    assert last["cpu_load_pct"] == 12.5 and last["temperatures_c"] == {"cpu": 50.2}
    assert abs(last["time"] - time.time()) < 60
    older = [json.loads(line)["active"][0] for line in (path.parent / "power.jsonl.1").open()]
    assert older and all(int(r.split("-")[1]) < 19 for r in older)


def test_monitor_logs_the_active_requests(tmp_path, orin_nano_hwmon):
    config = PowerConfig(source="hwmon", interval_ms=10, log=str(tmp_path / "p.jsonl"),
                         idle_window_s=0.05)
    monitor = PowerMonitor(config, hwmon_root=orin_nano_hwmon)
    with monitor:
        span = monitor.begin("req-42")
        time.sleep(0.1)
        report = monitor.end(span)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert any(r["active"] == ["req-42"] for r in records)
    assert monitor.idle_mw == 5072.0
    assert report.source == "hwmon"
    assert report.joules == pytest.approx(5.072 * report.seconds, rel=1e-9)


def test_config_defaults_and_validation():
    config = PowerConfig.from_dict({"source": "tegrastats", "interval_ms": 250, "log": "/tmp/p"})
    assert (config.source, config.interval_ms, config.log) == ("tegrastats", 250, "/tmp/p")
    assert PowerConfig.from_dict(None) == PowerConfig()
    bad = [
        ({"source": "rapl"}, "power.source"),
        ({"interval_ms": 0}, "power.interval_ms"),
        ({"interval_ms": "100"}, "power.interval_ms"),
        ({"interval_ms": True}, "power.interval_ms"),
        ({"log": ""}, "power.log"),
        ({"log_max_bytes": 10}, "power.log_max_bytes"),
        ({"log_backups": -1}, "power.log_backups"),
        ({"idle_window_s": -1}, "power.idle_window_s"),
        ({"interval_ms": 5000, "history_s": 1}, "power.history_s"),
        ({"intervall_ms": 100}, "unknown key"),
    ]
    for data, message in bad:
        with pytest.raises(ConfigError, match=message):
            PowerConfig.from_dict(data)
    with pytest.raises(ConfigError, match="mapping"):
        PowerConfig.from_dict(["tegrastats"])


def test_meter_keeps_finished_windows_only_while_they_matter(tmp_path):
    root = tmp_path / "hwmon"
    make_ina3221(root, 0, {1: ("VDD_IN", 5000, 800)})  # a constant 4 W
    sampler = PowerSampler(HwmonSource(interval_ms=10, root=root), history_s=10)
    meter = EnergyMeter(sampler)
    sampler.start()
    try:
        long = meter.begin("long")
        short = []
        for i in range(5):
            span = meter.begin(f"short-{i}")
            time.sleep(0.02)
            meter.end(span)
            short.append(span)
        report = meter.end(long)
    finally:
        sampler.stop()
    # the long request shared the board half-and-half while each short one ran
    shared = sum(s.end - s.start for s in short)
    expected = 4.0 * ((long.end - long.start) - shared / 2)
    assert report.joules == pytest.approx(expected, rel=1e-9)
    assert sum(s.report.joules for s in short) + report.joules == pytest.approx(
        4.0 * (long.end - long.start), rel=1e-9
    )
    assert len(meter._finished) == 0  # nothing running: no window is kept
