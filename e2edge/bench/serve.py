"""Daemon overhead: the same decode through the gRPC daemon vs the runtime in-process.

    e2edge bench serve --package PKG [--new-tokens 128] [--repeats 5] [--json] [--out FILE]

Both sides run the same package with the same settings in the same run, taking
turns: greedy, batch 1, exactly --new-tokens tokens (EOS ignored), after warm-up.
The bench starts the daemon itself on a loopback port and reaches it through real
gRPC; the in-process side iterates LLMEngine.generate directly. The daemon runs
- `--daemon process` (default): as `e2edge serve` in a child process, the way a
  robot stack meets it: client and daemon do not share a Python interpreter;
- `--daemon thread`: on an event loop thread of this process, so the client, the
  daemon's loop and its worker share one GIL (an upper bound on the overhead).
Times are taken where a caller sees them:
- time to first token: call -> first token in hand (first streamed message);
- decode time per token: first token -> last token, divided by (tokens - 1);
- total: call -> last token.
The daemon's per-token overhead is the difference of the median totals divided by
the token count, also as a percentage of the in-process decode time per token, checked
against MAX_OVERHEAD_PCT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from e2edge.bench.daemon_process import daemon_process
from e2edge.bench.result_file import save_result

# What serving through gRPC may add to each token, as a share of the in-process decode
# time: beyond it a client would notice the daemon, not the model.
MAX_OVERHEAD_PCT = 5.0
# A pause before each timed run: onnxruntime's worker threads spin for a while after
# a run, and the other side's spinning threads must not steal this side's cores.
SETTLE_S = 0.05
DEFAULT_PROMPT = "To be, or not to be, that is the question."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", required=True, help="llm model package directory")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per run (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per side first")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt text of every run")
    parser.add_argument("--threads", type=int, default=0, help="backend threads (0 = default)")
    parser.add_argument("--daemon", choices=("process", "thread"), default="process",
                        help="run the daemon as a child process (default) or a thread")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", help="also write the JSON result to this file")


def _timed(start_stream, clock) -> dict:
    """Start a stream of token counts, consume it, and time it from the caller's view."""
    time.sleep(SETTLE_S)
    start = clock()
    first = last = None
    tokens = 0
    for count in start_stream():
        now = clock()
        if count and first is None:
            first = now
        if count:
            last = now
        tokens += count
    if first is None or tokens < 2:
        raise RuntimeError(f"a run produced {tokens} tokens; need at least 2 to time decode")
    return {
        "ttft_s": first - start,
        "decode_s_per_token": (last - first) / (tokens - 1),
        "total_s": last - start,
        "tokens": tokens,
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _summary(runs: list[dict]) -> dict:
    per_token = _median([r["decode_s_per_token"] for r in runs])
    return {
        "ttft_ms": round(_median([r["ttft_s"] for r in runs]) * 1e3, 4),
        "total_ms": round(_median([r["total_s"] for r in runs]) * 1e3, 4),
        "decode_ms_per_token": round(per_token * 1e3, 5),
        "decode_tokens_per_s": round(1.0 / per_token, 2),
        "tokens_per_run": runs[0]["tokens"],
        "runs": len(runs),
    }


@contextlib.contextmanager
def _started_daemon(mode: str, config) -> Iterator[str]:
    """A daemon serving `config`, in a thread or a child process; yields its address."""
    if mode == "thread":
        from runtime.server.in_process import DaemonThread

        with DaemonThread(config, grace_s=0) as daemon:
            yield daemon.target
        return
    with tempfile.TemporaryDirectory(prefix="e2edge-bench-") as tmp:
        # A unix socket: a free address without a port race; still real gRPC over HTTP/2.
        target = f"unix:{tmp}/daemon.sock"
        model = config.models[0]
        config_path = Path(tmp) / "daemon.yaml"
        config_path.write_text(
            f"listen: {target}\ngrace_period_s: 0\nlogging: {{level: WARNING}}\n"
            f"models:\n  - name: {model.name}\n    path: {json.dumps(str(model.path))}\n"
            f"    threads: {model.threads}\n    max_queue: 0\n"
        )
        with daemon_process(config_path):
            yield target


def bench_serve(package: str, new_tokens: int = 128, repeats: int = 5, warmup: int = 2,
                prompt: str = DEFAULT_PROMPT, threads: int = 0, mode: str = "process") -> dict:
    import platform

    from runtime.client import EdgeClient
    from runtime.config import DaemonConfig, ModelConfig
    from runtime.llm.engine import LLMEngine
    from runtime.llm.sampling import SamplingParams

    if repeats < 1 or new_tokens < 2:
        raise ValueError("--repeats must be >= 1 and --new-tokens >= 2")
    clock = time.perf_counter
    path = Path(package).expanduser().resolve()
    engine = LLMEngine.load(path, threads=threads)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    config = DaemonConfig(
        listen="127.0.0.1:0",
        models=(ModelConfig(name="bench", path=path, threads=threads, max_queue=0),),
    )

    def in_process():
        return (len(e.token_ids) for e in engine.generate(prompt, params))

    with _started_daemon(mode, config) as target, EdgeClient(target) as client:
        (info,) = client.wait_loaded()
        if info.error:
            raise RuntimeError(f"the daemon could not load {path}: {info.error}")

        def through_daemon():
            stream = client.generate("bench", prompt, max_new_tokens=new_tokens, ignore_eos=True)
            return (len(m.token_ids) for m in stream)

        for _ in range(warmup):
            _timed(in_process, clock)
            _timed(through_daemon, clock)
        local, remote = [], []
        for _ in range(repeats):  # alternate, so drift (heat, other load) hits both sides
            local.append(_timed(in_process, clock))
            remote.append(_timed(through_daemon, clock))

    base, daemon_side = _summary(local), _summary(remote)
    # From the totals, not the first->last spreads: a stream may deliver its messages
    # in bursts, which shortens the spread while it delays the first token.
    overhead_ms = (daemon_side["total_ms"] - base["total_ms"]) / new_tokens
    overhead_pct = 100.0 * overhead_ms / base["decode_ms_per_token"]
    return {
        "benchmark": "serve",
        "package": str(path),
        "package_name": engine.package.name,
        "backend": engine.backend_name,
        "providers": engine.providers,
        "threads": threads,
        "daemon_mode": mode,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "in_process": base,
        "daemon": daemon_side,
        "overhead_ms_per_token": round(overhead_ms, 5),
        "overhead_pct_of_decode": round(overhead_pct, 2),
        "ttft_overhead_ms": round(daemon_side["ttft_ms"] - base["ttft_ms"], 4),
        "max_overhead_pct": MAX_OVERHEAD_PCT,
        "within_max_overhead": overhead_pct < MAX_OVERHEAD_PCT,
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 "processor": platform.processor() or platform.machine()},
    }


def format_result(result: dict) -> str:
    a, b = result["in_process"], result["daemon"]
    verdict = "within" if result["within_max_overhead"] else "over"
    return "\n".join([
        f"bench serve: {result['package_name']} on {result['backend']} "
        f"(daemon as a {result['daemon_mode']}) "
        f"({','.join(result['providers'])}), {result['new_tokens']} greedy tokens, "
        f"median of {result['repeats']}",
        f"  in-process  ttft {a['ttft_ms']:8.3f} ms   decode {a['decode_ms_per_token']:8.4f} "
        f"ms/token ({a['decode_tokens_per_s']:.1f} tok/s)   total {a['total_ms']:.2f} ms",
        f"  daemon      ttft {b['ttft_ms']:8.3f} ms   decode {b['decode_ms_per_token']:8.4f} "
        f"ms/token ({b['decode_tokens_per_s']:.1f} tok/s)   total {b['total_ms']:.2f} ms",
        f"  overhead    ttft {result['ttft_overhead_ms']:+8.3f} ms   decode "
        f"{result['overhead_ms_per_token']:+8.4f} ms/token (from totals) = "
        f"{result['overhead_pct_of_decode']:+.2f} % of decode ({verdict} the "
        f"{result['max_overhead_pct']:.0f} % limit)",
    ])


def run(args: argparse.Namespace) -> int:
    result = bench_serve(args.package, args.new_tokens, args.repeats, args.warmup,
                         args.prompt, args.threads, args.daemon)
    text = save_result(result, args.out)
    print(text if args.json else format_result(result))
    return 0
