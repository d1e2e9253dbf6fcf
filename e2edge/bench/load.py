"""Mixed load on a daemon for a fixed time: requests, errors by status, latency, throughput.

    e2edge bench load --target 127.0.0.1:50051 --clients 64 --duration 60 \\
        --mix generate:classify [--warmup 5] [--pid PID] [--metrics URL] [--json] [--out FILE]
    e2edge bench load --config daemon.yaml --clients 8 --duration 10   # starts the daemon

Each client is a thread with its own channel that sends one request after another
until the time is up, choosing the kind by the --mix weights (`generate:classify` =
one each; `generate=3:classify=1`): a Generate stream of --max-new-tokens tokens on
the first ready LLM, or a Classify of one image on the first ready vision model
(--generate-model / --classify-model pick others). Requests of the warm-up are not
counted. RESOURCE_EXHAUSTED is the daemon saying "queue full" on purpose and is
reported apart from real errors.

With --pid (or --config, which starts `e2edge serve` itself on a unix socket) the
daemon's resident memory is read from /proc after the warm-up and at the end; the
growth between the two is the leak check (within MAX_RSS_GROWTH_PCT).

With --metrics (or --config, which serves the daemon's metrics on a free loopback
port whatever its file says) the daemon's /metrics is read after the warm-up and at
the end, and the report's `scheduler` section has, per model over the measured
window, what the box-wide scheduler saw: busy seconds and their fraction of all
models', the CPU seconds its requests cost outside its units (handling), what the
shares divide (busy time plus handling over its slots: charged_fraction) beside the
configured share's fraction, seconds its units waited for a turn, units run and
requests shed (runtime/server/core/scheduler.py).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2edge.bench.result_file import save_result

KINDS = ("generate", "classify")
DELIBERATE = "RESOURCE_EXHAUSTED"  # queue full: load shedding, not a failure
# After warm-up a daemon's memory should stay flat under load; more growth than this
# over one run points at a leak.
MAX_RSS_GROWTH_PCT = 10.0
# Pause after a RESOURCE_EXHAUSTED before the next request: the daemon's retry pushback
# (when a place in the queue is likely to free), spread by +-50 % so that the refused
# clients do not all come back at once; this when the daemon gave none.
SHED_BACKOFF_S = 0.01


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: str  # gRPC status code name
    started: float  # time.monotonic()
    latency_s: float
    tokens: int = 0
    images: int = 0


def parse_mix(text: str) -> dict[str, float]:
    """`generate:classify` -> {generate: 1, classify: 1}; `generate=3:classify=1` weights."""
    mix: dict[str, float] = {}
    for part in text.split(":"):
        name, _, weight = part.strip().partition("=")
        if name not in KINDS:
            raise ValueError(f"--mix: unknown request kind {name!r} (kinds: {', '.join(KINDS)})")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--mix: weight of {name} must be a number, got {weight!r}") from None
        if value < 0 or name in mix:
            raise ValueError(f"--mix: {name} is given twice or has a negative weight")
        mix[name] = value
    if not any(mix.values()):
        raise ValueError("--mix: at least one kind needs a weight above 0")
    return mix


def kinds_by_client(mix: dict[str, float], clients: int) -> list[str]:
    """Each client's one request kind, in the --mix proportions (largest remainder):
    `generate:classify` over 64 clients is 32 of each, as separate applications are."""
    total = sum(mix.values())
    exact = {kind: clients * weight / total for kind, weight in mix.items()}
    counts = {kind: math.floor(share) for kind, share in exact.items()}
    by_remainder = sorted(exact, key=lambda kind: counts[kind] - exact[kind])
    for kind in by_remainder[:clients - sum(counts.values())]:
        counts[kind] += 1
    return [kind for kind in mix for _ in range(counts[kind])]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summarize(outcomes: list[Outcome], measured_s: float) -> dict:
    """Per kind: requests, statuses, latency percentiles (ok requests), throughput."""
    report: dict = {"duration_s": round(measured_s, 3), "kinds": {}}
    errors: Counter[str] = Counter()
    for kind in sorted({o.kind for o in outcomes}):
        mine = [o for o in outcomes if o.kind == kind]
        ok = [o for o in mine if o.status == "OK"]
        statuses = Counter(o.status for o in mine)
        latencies = [o.latency_s for o in ok]
        report["kinds"][kind] = {
            "requests": len(mine),
            "ok": len(ok),
            "statuses": dict(sorted(statuses.items())),
            "p50_ms": round(percentile(latencies, 50) * 1e3, 2),
            "p99_ms": round(percentile(latencies, 99) * 1e3, 2),
            "tokens_per_s": round(sum(o.tokens for o in ok) / measured_s, 2),
            "images_per_s": round(sum(o.images for o in ok) / measured_s, 2),
        }
        errors.update({s: n for s, n in statuses.items() if s not in ("OK", DELIBERATE)})
    report["requests"] = len(outcomes)
    report["errors"] = dict(sorted(errors.items()))  # besides deliberate RESOURCE_EXHAUSTED
    report["resource_exhausted"] = sum(o.status == DELIBERATE for o in outcomes)
    return report


# ---- the daemon's scheduler, from its /metrics -------------------------------------
SCHEDULER_COUNTERS = {  # Prometheus sample -> report key, per model
    "e2edge_scheduler_busy_seconds_total": "busy_s",
    "e2edge_scheduler_handling_seconds_total": "handling_s",
    "e2edge_scheduler_queue_seconds_total": "queue_s",
    "e2edge_scheduler_units_total": "units",
    "e2edge_scheduler_shed_requests_total": "shed_requests",
}
SCHEDULER_SETTINGS = {"e2edge_scheduler_share": "share",
                      "e2edge_scheduler_priority": "priority",
                      "e2edge_scheduler_slots": "slots"}


def scheduler_state(metrics_text: str) -> dict:
    """{"models": {name: counters and settings}, "capacity": {resource: slots}} from a
    /metrics page (empty models when the daemon has no scheduler metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    models: dict[str, dict] = {}
    capacity: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            model = sample.labels.get("model")
            key = SCHEDULER_COUNTERS.get(sample.name) or SCHEDULER_SETTINGS.get(sample.name)
            if key is not None and model is not None:
                models.setdefault(model, {})[key] = sample.value
                if key == "slots":
                    models[model]["resource"] = sample.labels.get("resource")
            elif sample.name == "e2edge_scheduler_capacity":
                capacity[sample.labels["resource"]] = int(sample.value)
    return {"models": models, "capacity": capacity}


def scheduler_window(before: dict, after: dict, measured_s: float) -> dict:
    """Per model over the measured window: the counters' growth, busy time as a fraction
    of all models' and of the wall time, the time charged to its share (busy time and
    its requests' handling) as a fraction of all models', and the share as a fraction
    of all shares."""
    from runtime.server.core.fair_queue import charged_seconds

    models = after["models"]

    def grown(name: str, key: str) -> float:
        return models[name].get(key, 0.0) - before["models"].get(name, {}).get(key, 0.0)

    busy = {name: grown(name, "busy_s") for name in models}
    charged = {name: charged_seconds(busy[name], grown(name, "handling_s"), m.get("resource"),
                               int(m.get("slots", 0))) for name, m in models.items()}
    total_busy, total_charged = sum(busy.values()), sum(charged.values())
    total_share = sum(m.get("share", 0.0) for m in models.values())
    report: dict = {}
    for name, m in sorted(models.items()):
        earlier = before["models"].get(name, {})
        row = {key: round(m.get(key, 0.0) - earlier.get(key, 0.0), 3)
               for key in SCHEDULER_COUNTERS.values()}
        row["units"] = int(row["units"])
        row["shed_requests"] = int(row["shed_requests"])
        row.update(
            busy_fraction=round(busy[name] / total_busy, 3) if total_busy else 0.0,
            busy_of_wall=round(busy[name] / measured_s, 3),
            charged_fraction=round(charged[name] / total_charged, 3) if total_charged else 0.0,
            share=m.get("share"), priority=int(m.get("priority", 0)),
            share_fraction=round(m.get("share", 0.0) / total_share, 3) if total_share else 0.0,
            slots=int(m.get("slots", 0)), resource=m.get("resource"),
        )
        report[name] = row
    return {"models": report, "capacity": after["capacity"]}


def read_metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def free_port() -> int:
    """A loopback port free now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/PID/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"/proc/{pid}/status has no VmRSS line")


# ---- the clients -------------------------------------------------------------------
class Workload:
    """What one request of each kind sends; built once from the daemon's models."""

    def __init__(self, client, mix: dict[str, float], args: argparse.Namespace):
        from runtime.proto.e2edge.v1 import runtime_pb2 as pb

        models = [m for m in client.wait_loaded(args.ready_timeout)
                  if m.state == pb.MODEL_STATE_READY]
        self.mix = {k: w for k, w in mix.items() if w > 0}
        self.models: dict[str, str] = {}
        wanted = {"generate": (args.generate_model, pb.MODEL_KIND_LLM),
                  "classify": (args.classify_model, pb.MODEL_KIND_VISION)}
        for kind in self.mix:
            name, model_kind = wanted[kind]
            if name is None:
                name = next((m.name for m in models if m.kind == model_kind), None)
            if name is None or name not in {m.name for m in models}:
                raise ValueError(f"--mix has {kind} but the daemon has no ready model for it "
                                 f"(ready: {', '.join(m.name for m in models) or 'none'})")
            self.models[kind] = name
        self.max_new_tokens = args.max_new_tokens
        self.prompt = args.prompt
        self.image = _image(args.image) if "classify" in self.mix else None

    def run_one(self, client, kind: str) -> Outcome:
        from runtime.client import RemoteError

        started = time.monotonic()
        try:
            if kind == "generate":
                messages = list(client.generate(self.models[kind], self.prompt,
                                                ignore_eos=True,
                                                max_new_tokens=self.max_new_tokens))
                tokens = messages[-1].stats.completion_tokens if messages else 0
                return Outcome(kind, "OK", started, time.monotonic() - started, tokens=tokens)
            client.classify(self.models[kind], [self.image])
            return Outcome(kind, "OK", started, time.monotonic() - started, images=1)
        except RemoteError as e:
            outcome = Outcome(kind, e.code.name, started, time.monotonic() - started)
            if outcome.status == DELIBERATE:  # as a well-behaved client backs off
                time.sleep(SHED_BACKOFF_S if e.retry_after_s is None
                           else e.retry_after_s * random.uniform(0.5, 1.5))
            return outcome


def _image(path: str | None):
    from runtime.server.edge.convert import encoded_image, tensor_message

    if path:
        return encoded_image(Path(path).read_bytes())
    import numpy as np

    rng = np.random.default_rng(0)
    return tensor_message(rng.integers(0, 256, size=(64, 64), dtype=np.uint8))  # (H, W) grey


def run_clients(target: str, security, workload: Workload, clients: int, warmup_s: float,
                duration_s: float, on_warm=None, seed: int = 0,
                on_end=None, mix_by: str = "request") -> tuple[list[Outcome], float]:
    """All clients from now until warm-up + duration; the outcomes after the warm-up.
    `on_warm` and `on_end` are called as the measured window opens and closes.
    `mix_by`: "request" (each request draws its kind) or "client" (each client keeps one)."""
    from runtime.client import EdgeClient

    start = time.monotonic()
    measure_from = start + warmup_s
    end = measure_from + duration_s
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    kinds, weights = zip(*workload.mix.items())
    fixed = kinds_by_client(workload.mix, clients) if mix_by == "client" else None

    def client_loop(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        mine = []
        with EdgeClient(target, security=security) as client:
            while time.monotonic() < end:
                kind = fixed[index] if fixed else rng.choices(kinds, weights)[0]
                outcome = workload.run_one(client, kind)
                if outcome.started >= measure_from:
                    mine.append(outcome)
        with lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True)
               for i in range(clients)]
    for thread in threads:
        thread.start()
    if on_warm is not None:
        time.sleep(max(0.0, measure_from - time.monotonic()))
        on_warm()
    if on_end is not None:
        time.sleep(max(0.0, end - time.monotonic()))
        on_end()
    for thread in threads:
        thread.join()
    return outcomes, duration_s


# The daemon as `e2edge serve --config FILE --listen SOCKET` runs it, with its metrics
# endpoint moved to the port the bench picked (a file's own `metrics:` too).
SERVE_WITH_METRICS = """
import asyncio, dataclasses, sys
from runtime.cli.serve import serve
from runtime.config import MetricsConfig, load_config, with_listen
from runtime.server.guard.request_log import configure_logging
path, listen, metrics = sys.argv[1:4]
config = dataclasses.replace(with_listen(load_config(path), listen), metrics=MetricsConfig(metrics))
configure_logging(config.logging)
sys.exit(asyncio.run(serve(config, listen_override=listen)))
"""


@contextlib.contextmanager
def _started_daemon(config: str) -> Iterator[tuple[str, int, str]]:
    """The config's daemon on a unix socket of a temp folder, its metrics on a free
    loopback port: (target, pid, metrics URL)."""
    from runtime.client import EdgeClient

    with tempfile.TemporaryDirectory(prefix="e2edge-load-") as tmp:
        target = f"unix:{tmp}/e2edge.sock"
        metrics = f"127.0.0.1:{free_port()}"
        log = open(Path(tmp) / "serve.log", "w")  # noqa: SIM115 (closed below)
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE_WITH_METRICS, config, target, metrics],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            with EdgeClient(target) as client:
                deadline = time.monotonic() + 120
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"e2edge serve exited ({process.returncode}): "
                                           f"{(Path(tmp) / 'serve.log').read_text()[-2000:]}")
                    try:
                        client.wait_loaded(1.0)
                        break
                    except TimeoutError:
                        if time.monotonic() > deadline:
                            raise
            yield target, process.pid, f"http://{metrics}/metrics"
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


# ---- command -----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from runtime import client_security

    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="daemon address, host:port or unix:/path")
    where.add_argument("--config", help="start `e2edge serve --config` here and load it")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--duration", type=float, default=30.0, metavar="S",
                        help="measured seconds (30)")
    parser.add_argument("--warmup", type=float, default=5.0, metavar="S",
                        help="seconds of load before measuring (5)")
    parser.add_argument("--mix", default="generate:classify",
                        help="request kinds and weights, e.g. generate=3:classify=1")
    parser.add_argument("--mix-by", choices=("request", "client"), default="request",
                        help="request: each request draws its kind by the weights; client: "
                             "each client keeps one kind, the clients split by the weights "
                             "(separate applications, e.g. a camera pipeline and a chat)")
    parser.add_argument("--generate-model", help="LLM to load (default: the first ready)")
    parser.add_argument("--classify-model", help="vision model (default: the first ready)")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="tokens per Generate stream")
    parser.add_argument("--prompt", default="To be, or not to be, that is the question.",
                        help="prompt text of every Generate")
    parser.add_argument("--image", help="image file to classify (default: 64x64 noise)")
    parser.add_argument("--pid", type=int, help="the daemon's pid, for its memory")
    parser.add_argument("--metrics", metavar="URL",
                        help="the daemon's /metrics (e.g. http://127.0.0.1:9400/metrics), "
                             "for its scheduler's busy time per model (--config: its own)")
    parser.add_argument("--ready-timeout", type=float, default=120.0, metavar="S",
                        help="how long to wait for the daemon's models to be loaded")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the clients' choice of request kind")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", help="also write the JSON report here")
    client_security.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from runtime import client_security
    from runtime.client import EdgeClient

    if args.clients < 1 or args.duration <= 0 or args.warmup < 0:
        raise ValueError("--clients must be >= 1, --duration > 0 and --warmup >= 0")
    mix = parse_mix(args.mix)
    security = client_security.from_args(args)
    with contextlib.ExitStack() as stack:
        target, pid, metrics_url = args.target, args.pid, args.metrics
        if args.config:
            target, pid, metrics_url = stack.enter_context(_started_daemon(args.config))
        with EdgeClient(target, security=security) as client:
            workload = Workload(client, mix, args)
        memory: dict[str, int] = {}
        scheduler: dict[str, dict] = {}

        def warm() -> None:
            if pid is not None:
                memory["after_warmup"] = rss_bytes(pid)
            if metrics_url:
                scheduler["after_warmup"] = scheduler_state(read_metrics(metrics_url))

        def end() -> None:
            if metrics_url:
                scheduler["end"] = scheduler_state(read_metrics(metrics_url))

        outcomes, measured = run_clients(target, security, workload, args.clients,
                                         args.warmup, args.duration, warm, args.seed, end,
                                         args.mix_by)
        if pid is not None:
            memory["end"] = rss_bytes(pid)
    from runtime.host_facts import machine_facts

    report = summarize(outcomes, measured)
    report.update(target=target, clients=args.clients, mix=mix, mix_by=args.mix_by,
                  models=workload.models,
                  max_new_tokens=args.max_new_tokens, machine=machine_facts())
    if scheduler:
        report["scheduler"] = scheduler_window(scheduler["after_warmup"], scheduler["end"],
                                               measured)
    if memory:
        growth = 100.0 * (memory["end"] - memory["after_warmup"]) / memory["after_warmup"]
        report["memory"] = {"rss_after_warmup_mb": round(memory["after_warmup"] / 2**20, 1),
                            "rss_end_mb": round(memory["end"] / 2**20, 1),
                            "growth_pct": round(growth, 2),
                            "within_max_growth": abs(growth) <= MAX_RSS_GROWTH_PCT}
    text = save_result(report, args.out)
    print(text if args.json else format_report(report))
    return 0


def format_report(report: dict) -> str:
    lines = [f"{report['requests']} requests in {report['duration_s']:.0f}s from "
             f"{report['clients']} clients; errors: {report['errors'] or 'none'}; "
             f"deliberate RESOURCE_EXHAUSTED: {report['resource_exhausted']}"]
    for kind, k in report["kinds"].items():
        rate = (f"{k['tokens_per_s']:.1f} tokens/s" if kind == "generate"
                else f"{k['images_per_s']:.1f} images/s")
        lines.append(f"  {kind:9s} {k['requests']:6d} requests  ok {k['ok']:6d}  "
                     f"p50 {k['p50_ms']:8.1f} ms  p99 {k['p99_ms']:8.1f} ms  {rate}")
    if "memory" in report:
        m = report["memory"]
        lines.append(f"  daemon memory {m['rss_after_warmup_mb']:.1f} MB after warm-up -> "
                     f"{m['rss_end_mb']:.1f} MB at the end ({m['growth_pct']:+.1f} %)")
    for name, s in report.get("scheduler", {}).get("models", {}).items():
        lines.append(f"  {name}: busy {s['busy_s']:.1f}s = {100 * s['busy_fraction']:.1f} % "
                     f"of the models' (share {100 * s['share_fraction']:.1f} %, priority "
                     f"{s['priority']}), {100 * s['busy_of_wall']:.0f} % of the time; handling "
                     f"{s['handling_s']:.1f} CPU s, charged {100 * s['charged_fraction']:.1f} % "
                     f"of the models'; waited {s['queue_s']:.1f}s over {s['units']} units; "
                     f"shed {s['shed_requests']}")
    return "\n".join(lines)
