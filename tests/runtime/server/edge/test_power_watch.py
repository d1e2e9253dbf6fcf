"""Energy in the daemon: a real daemon, the fake `tegrastats` replaying real-format lines.

The main trace is an Orin Nano (JetPack 6) line with its rails set to constant power,
VDD_IN 6000 mW: with constant power P the energy of any window is exactly P times its
length (held or interpolated edges alike), so a response's joules must equal
6.0 W x its window, and the window must be the generation's own time.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path

import fake_tegrastats
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.client import EdgeClient, RemoteError
from runtime.config import DaemonConfig, MetricsConfig, ModelConfig, parse_config
from runtime.errors import ConfigError
from runtime.power.config import PowerConfig
from runtime.power.tegrastats_parse import parse_line
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.in_process import DaemonThread

pytestmark = pytest.mark.timeout(60)

P_W = 6.0  # VDD_IN of the constant trace, watts
INTERVAL_MS = 20  # the 200-token generation takes ~100 ms here: several readings
PROMPT = "To be, or not to be"
LONG = 200  # tokens


def constant_trace(path: Path) -> Path:
    """The first Orin Nano JetPack 6 line with constant rails (VDD_IN 6000 mW)."""
    real = (fake_tegrastats.DATA / "orin_nano_jp6.txt").read_text().splitlines()[0]
    rails = {"VDD_IN": 6000, "VDD_CPU_GPU_CV": 2500, "VDD_SOC": 1500}
    for rail, mw in rails.items():
        real, n = re.subn(rf"\b{rail} \d+mW/\d+mW", f"{rail} {mw}mW/{mw}mW", real)
        assert n == 1, rail
    sample = parse_line(real, t=0.0)
    assert sample.total_mw == 6000.0 and dict(sample.rails_mw) == rails
    path.write_text((real + "\n") * 20)
    return path


def daemon_config(package, power: PowerConfig, metrics: MetricsConfig | None = None):
    return DaemonConfig(
        listen="127.0.0.1:0",
        models=(ModelConfig("demo", package, max_concurrent=2, max_queue=8),),
        power=power,
        metrics=metrics,
    )


@pytest.fixture(scope="module")
def powered(tiny_llama_package, tmp_path_factory):
    """A daemon measuring the constant trace, with a rotated power log and /metrics."""
    tmp = tmp_path_factory.mktemp("powered")
    with pytest.MonkeyPatch.context() as mp:
        fake_tegrastats.install(tmp / "bin", mp, constant_trace(tmp / "constant.txt"))
        power = PowerConfig(source="tegrastats", interval_ms=INTERVAL_MS,
                            log=str(tmp / "power.jsonl"), log_max_bytes=2048, log_backups=2,
                            idle_window_s=0.3)
        config = daemon_config(tiny_llama_package, power, MetricsConfig("127.0.0.1:0"))
        with DaemonThread(config, grace_s=0) as d:
            yield d


@pytest.fixture
def client(powered):
    with EdgeClient(powered.target) as c:
        yield c


def final(stream) -> pb.GenerateResponse:
    messages = list(stream)
    assert messages[-1].HasField("stats")
    return messages[-1]


def test_generate_reports_the_energy_of_the_replayed_power(client):
    last = final(client.generate("demo", PROMPT, max_new_tokens=LONG, ignore_eos=True))
    s, e = last.stats, last.stats.energy
    assert e.power_source == "tegrastats"
    assert s.completion_tokens == LONG
    # Constant power: exactly P x window, whatever the samples' phase.
    assert e.joules == pytest.approx(P_W * e.window_s, rel=1e-9)
    # The window is the generation itself: it opens when the request gets its slot (just
    # before the engine starts) and closes when the last token reaches the handler, so it
    # holds the engine's time plus thread hand-offs (a few ms; 50 ms on 2 busy cores).
    engine_s = s.total_s - s.queue_s
    assert engine_s <= e.window_s < engine_s + 0.05
    assert e.joules == pytest.approx(P_W * engine_s, abs=P_W * 0.05)
    assert e.samples >= 2
    assert e.joules_above_idle == pytest.approx(0.0, abs=1e-9)  # the idle baseline is P too
    assert s.joules_per_token == pytest.approx(e.joules / LONG, rel=1e-12)
    assert s.tokens_per_joule == pytest.approx(LONG / e.joules, rel=1e-12)


def test_concurrent_requests_share_the_power(client):
    results = []
    together = threading.Barrier(2)

    def run():
        with EdgeClient(client.target) as own:
            own.list_models()  # connected before the barrier: both requests start at once
            together.wait()
            results.append(final(own.generate("demo", PROMPT, max_new_tokens=LONG,
                                              ignore_eos=True)).stats.energy)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = results
    # The shares add up to P x the union of the windows: at least the longer window,
    # and clearly less than both windows' sum since the two ran side by side.
    total = a.joules + b.joules
    assert total >= P_W * max(a.window_s, b.window_s) - 1e-9
    assert total < 0.8 * P_W * (a.window_s + b.window_s)
    for share in (a, b):
        assert share.joules < P_W * share.window_s


def test_power_log_lines_carry_the_active_request_ids(client, powered):
    final(client.generate("demo", PROMPT, max_new_tokens=LONG, ignore_eos=True,
                          request_id="logged-7"))
    path = Path(powered.config.power.log)
    files = [path, path.with_name(path.name + ".1"), path.with_name(path.name + ".2")]
    # 2 KiB of lines at 50 per second rotate within a second of an idle machine; on a
    # busy one the sampling thread may lag, so wait for it (bounded) instead of racing.
    deadline = time.monotonic() + 15
    while not files[1].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert files[1].exists(), "2 KiB of lines at 50 per second: the log has rotated"
    assert all(f.stat().st_size <= 2048 for f in files if f.exists())
    lines = [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]
    assert all(line["total_mw"] == 6000.0 and line["rails_mw"]["VDD_SOC"] == 1500.0
               for line in lines)
    during = [line for line in lines if "logged-7" in line["active"]]
    assert during, "no power log line while the request ran"
    assert all(isinstance(line["time"], float) for line in during)


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(values, name: str, **labels) -> float:
    return values.get((name, frozenset(labels.items())), 0.0)


def test_metrics_show_the_rails_and_count_each_request(client, powered):
    port = powered.daemon.metrics.port
    before = scrape(port)
    last = final(client.generate("demo", PROMPT, max_new_tokens=16, ignore_eos=True))
    with pytest.raises(RemoteError):
        list(client.generate("no-such-model", PROMPT))
    time.sleep(5 * INTERVAL_MS / 1000)  # a few more readings for the energy counter
    after = scrape(port)

    assert metric(after, "e2edge_power_rail_milliwatts", rail="VDD_IN") == 6000.0
    assert metric(after, "e2edge_power_rail_milliwatts", rail="VDD_CPU_GPU_CV") == 2500.0
    assert metric(after, "e2edge_power_total_milliwatts") == 6000.0
    assert metric(after, "e2edge_power_idle_milliwatts") == 6000.0
    energy_total = "e2edge_energy_joules_total"
    assert metric(after, energy_total) > metric(before, energy_total)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    ok = dict(model="demo", kind="generate", status="OK")
    assert grew("e2edge_requests_total", **ok) == 1
    assert grew("e2edge_requests_total", model="_unknown", kind="generate",
                status="NOT_FOUND") == 1
    assert grew("e2edge_request_latency_seconds_count", model="demo", kind="generate") == 1
    assert grew("e2edge_tokens_total", model="demo") == 16
    assert grew("e2edge_model_energy_joules_total", model="demo") == pytest.approx(
        last.stats.energy.joules, rel=1e-9)


def test_watch_power_streams_readings_and_stops_on_cancel(client, powered):
    watchers = powered.daemon.servicer.power_watchers
    stream = client.watch_power()
    received = []
    for sample in stream:
        received.append(sample)
        if len(received) == 3:
            stream.cancel()
            break
    assert all(s.power_source == "tegrastats" and s.total_mw == 6000.0 for s in received)
    assert dict(received[0].rails_mw) == {"VDD_IN": 6000.0, "VDD_CPU_GPU_CV": 2500.0,
                                          "VDD_SOC": 1500.0}
    assert received[0].idle_mw == 6000.0 and received[0].HasField("cpu_load_pct")
    assert received[0].monotonic_s < received[1].monotonic_s < received[2].monotonic_s
    assert abs(received[0].time_unix_s - time.time()) < 5
    deadline = time.monotonic() + 5
    while len(watchers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(watchers) == 0, "a cancelled WatchPower stream kept its listener"

    # One reading in ten (200 ms at 20 ms), and the stream ends after max_samples.
    decimated = list(client.watch_power(interval_ms=200, max_samples=3, timeout_s=10))
    assert len(decimated) == 3
    gaps = [b.monotonic_s - a.monotonic_s for a, b in zip(decimated, decimated[1:])]
    assert all(0.15 < gap < 0.6 for gap in gaps), gaps


def test_models_name_the_power_source(client):
    (info,) = client.list_models()
    assert info.power_source == "tegrastats"
    assert client.get_model("demo").power_source == "tegrastats"


def test_source_none_names_it_and_reports_no_energy(tiny_llama_package):
    config = daemon_config(tiny_llama_package, PowerConfig(source="none"))
    with DaemonThread(config, grace_s=0) as d, EdgeClient(d.target) as c:
        last = final(c.generate("demo", PROMPT, max_new_tokens=8))
        s = last.stats
        assert s.energy.power_source == "none"
        assert not s.energy.HasField("joules") and not s.energy.HasField("joules_above_idle")
        assert not s.HasField("joules_per_token") and not s.HasField("tokens_per_joule")
        assert c.get_model("demo").power_source == "none"
        with pytest.raises(RemoteError) as caught:
            list(c.watch_power(timeout_s=5))
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "no power source" in caught.value.details


def test_a_dead_tegrastats_is_restarted_while_serving_goes_on(
    tiny_llama_package, tmp_path, monkeypatch
):
    # The child exits after 8 lines (0.4 s); restarts wait 0.5 s, then 1 s, ...
    starts = fake_tegrastats.install(tmp_path / "bin", monkeypatch,
                                     constant_trace(tmp_path / "c.txt"), exit_after=8)
    power = PowerConfig(source="tegrastats", interval_ms=50, idle_window_s=0.2)
    with DaemonThread(daemon_config(tiny_llama_package, power), grace_s=0) as d, \
            EdgeClient(d.target) as c:
        served = 0
        deadline = time.monotonic() + 20
        while len(starts.read_text().split()) < 3 and time.monotonic() < deadline:
            last = final(c.generate("demo", PROMPT, max_new_tokens=8, ignore_eos=True))
            assert last.stats.completion_tokens == 8 and last.stats.energy.power_source
            served += 1
        assert len(starts.read_text().split()) >= 3, "tegrastats was not restarted twice"
        assert d.daemon.energy.monitor.source.restarts >= 2
        assert served > 3
        # Once readings flow again, responses carry energy again.
        measured = None
        while measured is None and time.monotonic() < deadline:
            e = final(c.generate("demo", PROMPT, max_new_tokens=32, ignore_eos=True)).stats.energy
            if e.HasField("joules"):
                measured = e
        assert measured is not None, "no energy after the restart"
        assert measured.joules == pytest.approx(P_W * measured.window_s, rel=1e-9)


def test_energy_is_unknown_when_the_readings_have_stopped(powered):
    """Readings older than stale_s at a window's end: unknown energy, not extrapolated."""
    energy = powered.daemon.energy
    assert energy.end(energy.begin("fresh")).joules is not None
    saved, energy.stale_s = energy.stale_s, -1.0  # every reading counts as stale now
    try:
        stale = energy.end(energy.begin("stale"))
    finally:
        energy.stale_s = saved
    assert stale.joules is None and stale.joules_above_idle is None
    assert stale.source == "tegrastats"


def test_metrics_config_is_validated_with_its_line():
    base = "models:\n  - name: demo\n    path: /tmp/x\n"
    config = parse_config(base + "metrics:\n  listen: 0.0.0.0:9400\n", "d.yaml")
    assert config.metrics == MetricsConfig("0.0.0.0:9400")
    assert parse_config(base, "d.yaml").metrics is None
    assert parse_config(base + "metrics: {}\n", "d.yaml").metrics == MetricsConfig()
    with pytest.raises(ConfigError, match=r"^d\.yaml:5: metrics\.listen: expected host:port"):
        parse_config(base + "metrics:\n  listen: unix:/run/m.sock\n", "d.yaml")
    with pytest.raises(ConfigError, match=r"^d\.yaml:5: metrics\.port: unknown key"):
        parse_config(base + "metrics:\n  port: 9400\n", "d.yaml")


def test_metrics_port_in_use_is_a_clear_error(tiny_llama_package, powered):
    taken = f"127.0.0.1:{powered.daemon.metrics.port}"
    config = daemon_config(tiny_llama_package, PowerConfig(source="none"), MetricsConfig(taken))
    with pytest.raises(ConfigError, match=rf"metrics\.listen {taken}: cannot bind"):
        DaemonThread(config, grace_s=0).start()


def test_cli_stats_line_shows_the_energy():
    from runtime.cli.generate import format_stats
    from runtime.cli.models import format_table

    message = pb.GenerateResponse(request_id="r", finish_reason=pb.FINISH_REASON_LENGTH)
    message.stats.completion_tokens = 100
    message.stats.energy.power_source = "none"
    assert " J" not in format_stats(message)
    message.stats.energy.joules = 2.5
    message.stats.energy.power_source = "tegrastats"
    message.stats.joules_per_token = 0.025
    message.stats.tokens_per_joule = 40.0
    assert format_stats(message).endswith(
        "; energy 2.500 J (tegrastats), 25.00 mJ/token, 40.0 tokens/J")
    table = format_table([pb.ModelInfo(name="demo", power_source="tegrastats")])
    assert table.splitlines()[-1] == "power source: tegrastats"
