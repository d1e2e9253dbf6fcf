"""tegrastats: every JetPack's line format, the child process, its restarts, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import fake_tegrastats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e2edge.cli import main as e2edge_main
from runtime.errors import BackendUnavailable
from runtime.power.sampler import PowerSampler
from runtime.power.sources import detect_source
from runtime.power.tegrastats import TegrastatsSource
from runtime.power.tegrastats_parse import parse_line, parse_rails

DATA = Path(__file__).resolve().parent / "data" / "tegrastats"


def fixture_lines(name: str) -> list[str]:
    return [line for line in (DATA / f"{name}.txt").read_text().splitlines() if line]


# fixture -> (total of each line in mW, rail names, input rail or None when summed)
FORMATS = {
    "nano_jp4": ([4520, 7412, 7208], {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}, "POM_5V_IN"),
    "xavier_jp4": (
        [18401 + 2301 + 4602 + 0 + 2914 + 4632, 153 + 920 + 1840 + 0 + 766 + 3856],
        {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"},
        None,
    ),
    "xavier_jp5": (
        [467 + 467 + 1245 + 0 + 311 + 2768, 14638 + 1855 + 3562 + 0 + 2475 + 4150],
        {"GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"},
        None,
    ),
    "orin_nano_jp6": ([17946, 5073, 11204], {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}, "VDD_IN"),
    "agx_orin_jp7": (
        [4383 + 1195 + 5048 + 1091, 21874 + 6373 + 7451 + 3588],
        {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"},
        None,
    ),
    "thor_jp7": ([26686, 58943], {"VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0", "VIN"}, "VIN"),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_format_parses_to_its_totals_and_rails(name):
    totals, rails, input_rail = FORMATS[name]
    samples = [parse_line(line, t=float(i)) for i, line in enumerate(fixture_lines(name))]
    assert [s.total_mw for s in samples] == totals
    for s in samples:
        assert set(s.rails_mw) == rails
        if input_rail is None:
            assert s.total_mw == sum(s.rails_mw.values())
        else:
            assert s.total_mw == s.rails_mw[input_rail] < sum(s.rails_mw.values())


def test_loads_memory_and_temperatures_of_each_generation():
    nano = parse_line(fixture_lines("nano_jp4")[0], t=0.0)
    assert (nano.ram_used_mb, nano.ram_total_mb) == (1180, 3965)
    assert nano.cpu_load_pct == pytest.approx((30 + 33 + 28 + 26) / 4)
    assert nano.gpu_load_pct == 0
    assert nano.temperatures_c["CPU"] == 60.5 and nano.temperatures_c["thermal"] == 59.75
    assert nano.rails_mw["POM_5V_CPU"] == 1078  # the current value, not the average 1205

    nano_cores_off = parse_line(fixture_lines("nano_jp4")[2], t=0.0)
    assert nano_cores_off.cpu_load_pct == pytest.approx((86 + 92) / 2)  # 'off' cores left out

    orin = parse_line(fixture_lines("orin_nano_jp6")[0], t=0.0)
    assert orin.gpu_load_pct == 84  # GR3D_FREQ 84%@[713]
    assert orin.temperatures_c["tj"] == 65.562 and len(orin.temperatures_c) == 9
    assert orin.rails_mw["VDD_SOC"] == 3923

    orin_idle = parse_line(fixture_lines("orin_nano_jp6")[1], t=0.0)
    assert "gpu" not in orin_idle.temperatures_c  # gpu@-256C: the zone is off
    assert orin_idle.temperatures_c["cpu"] == 50.187

    agx7 = parse_line(fixture_lines("agx_orin_jp7")[1], t=0.0)
    assert agx7.gpu_load_pct == 99  # GR3D_FREQ 99%@[1300,1300]
    assert agx7.temperatures_c["gpu"] == 60.843  # gpu@60.843C/60.843C
    assert agx7.rails_mw["VDD_GPU_SOC"] == 21874  # first of three values
    assert agx7.ram_total_mb == 62817

    thor = parse_line(fixture_lines("thor_jp7")[1], t=0.0)
    assert thor.gpu_load_pct is None  # GR3D_FREQ @[1575,1575,1575] gives no load
    assert thor.cpu_load_pct == pytest.approx((35 + 28 + 41) / 3)
    assert thor.temperatures_c["gpu"] == 62.906

    xavier = parse_line(fixture_lines("xavier_jp4")[0], t=0.0)
    assert xavier.rails_mw["CPU"] == 2301 and xavier.temperatures_c["CPU"] == 49
    assert xavier.gpu_load_pct == 95


def test_unknown_rails_are_kept_by_name():
    sample = parse_line("RAM 900/3000MB (lfb 2x4MB) VDD_NEW_NPU 1234mW/1200mW AUX_RAIL 10/12", 0.0)
    assert sample.rails_mw == {"VDD_NEW_NPU": 1234.0, "AUX_RAIL": 10.0}
    assert sample.total_mw == 1244.0


@pytest.mark.parametrize(
    "line",
    [
        "",
        "tegrastats: permission denied",
        "RAM 2201/3956MB (lfb 83x4MB) SWAP 12/1978MB (cached 3MB) CPU [0%@345,99%@2035]",
        "IRAM 0/252kB(lfb 252kB) cpu@52.968C/52.968C",
        "VDD_IN 12mW/",
        "\x00\xff garbage /// 12/34",
    ],
)
def test_lines_without_rails_yield_no_sample(line):
    assert parse_line(line, 0.0) is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("VDINRAM_0123456789 /%@[],.mWC-xGPUoff"), max_size=200))
def test_no_line_crashes_the_parser(line):
    sample = parse_line(line, 0.0)
    if sample is not None:
        assert sample.rails_mw and sample.total_mw >= 0


def test_memory_and_temperature_fields_are_not_rails():
    rails = parse_rails(fixture_lines("agx_orin_jp7")[0])
    assert not {"RAM", "SWAP", "cpu", "gpu", "EMC_FREQ", "GR3D_FREQ"} & set(rails)


def _collect(source, n: int, timeout_s: float = 10.0) -> list:
    deadline = time.monotonic() + timeout_s
    samples = []
    while len(samples) < n and time.monotonic() < deadline:
        sample = source.next_sample(timeout=0.5)
        if sample is not None:
            samples.append(sample)
    return samples


def test_source_replays_the_fake_at_the_requested_interval(tmp_path, monkeypatch):
    lines = tmp_path / "lines.txt"
    orin = fixture_lines("orin_nano_jp6")
    lines.write_text("\n".join([orin[0], "tegrastats: cannot read a sensor", *orin[1:]]) + "\n")
    starts = fake_tegrastats.install(tmp_path / "bin", monkeypatch, lines)
    source = TegrastatsSource(interval_ms=40)
    with source:
        samples = _collect(source, 5)
    assert [s.total_mw for s in samples] == [17946, 5073, 11204, 17946, 5073]
    assert starts.read_text().split() == ["40"]  # tegrastats --interval 40
    gaps = [b.t - a.t for a, b in zip(samples, samples[1:])]
    assert 0.02 < sum(gaps) / len(gaps) < 0.2
    assert source.lines_skipped >= 1  # the error line: counted, no sample, no crash


def test_a_dead_child_is_restarted_while_sampling_goes_on(tmp_path, monkeypatch):
    starts = fake_tegrastats.install(tmp_path / "bin", monkeypatch, "nano_jp4", exit_after=2)
    source = TegrastatsSource(interval_ms=20, backoff_initial_s=0.05)
    sampler = PowerSampler(source, history_s=60)
    sampler.start()
    try:
        assert sampler.wait_for_sample_after(0.0, timeout=10)
        deadline = time.monotonic() + 10
        while len(sampler.samples()) < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sampler.stop()
    samples = sampler.samples()
    assert len(samples) >= 7  # each child gives 2 lines: it took at least 3 restarts
    assert source.restarts >= 3
    assert len(starts.read_text().split()) == source.restarts + 1
    # every child replays from the first line: the totals show the restarts
    assert [s.total_mw for s in samples[:6]] == [4520, 7412] * 3


def test_missing_tegrastats_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="not on PATH"):
        TegrastatsSource(interval_ms=100).start()


def test_auto_picks_tegrastats_when_it_is_on_path(tmp_path, monkeypatch):
    fake_tegrastats.install(tmp_path / "bin", monkeypatch, "thor_jp7")
    assert detect_source(hwmon_root=tmp_path / "no-hwmon") == "tegrastats"


def test_cli_prints_readings_and_records_the_log(tmp_path, monkeypatch, capsys):
    fake_tegrastats.install(tmp_path / "bin", monkeypatch, "orin_nano_jp6")
    record = tmp_path / "power.jsonl"
    code = e2edge_main(
        ["power", "--source", "tegrastats", "--interval", "50", "--count", "3",
         "--record", str(record)]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "power source: tegrastats, every 50 ms"
    readings = [line for line in out if "total" in line and "mW" in line]
    assert len(readings) == 3
    assert "total    17946 mW" in readings[0] and "VDD_CPU_GPU_CV 8896" in readings[0]
    assert "VDD_SOC 1351" in readings[1]
    assert out[-1].startswith("3 readings over ")
    records = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["total_mw"] for r in records] == [17946, 5073, 11204]
    assert records[0]["rails_mw"]["VDD_IN"] == 17946 and records[0]["active"] == []
    assert records[0]["time"] > 1.6e9  # wall-clock Unix seconds


def test_cli_none_source_is_an_error(capsys):
    assert e2edge_main(["power", "--source", "none", "--count", "1"]) == 1
    assert "gives no readings" in capsys.readouterr().err
