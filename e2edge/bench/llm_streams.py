"""Aggregate decode tokens/s of N concurrent Generate streams through the daemon.

The bench starts `e2edge serve` as a child process on a unix socket in a temporary
folder, serving the package with `max_concurrent` = the largest N (and a queue at
least as long), so that every stream of a round runs at once. For each N, N clients
(each its own gRPC channel, as separate programs would have) are released together
and each streams exactly `new_tokens` greedy tokens (EOS ignored) from the same
prompt. Per round:

- aggregate tokens/s = all tokens of the round / (release -> last stream done);
- per-stream decode tokens/s = (tokens - 1) / (first token -> last token), as a
  caller sees it.

One untimed warm-up round, then the median of `runs` rounds, for each N. N = 1 is
always measured: `speedup_vs_1` is each N's aggregate over the single stream's.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2edge.bench.daemon_process import daemon_process

MODEL_NAME = "bench"
LOAD_TIMEOUT_S = 300.0


def parse_streams(text: str) -> tuple[int, ...]:
    """"1,4,8" -> (1, 4, 8); "" or "0" -> () (no streams bench); 1 is always added."""
    text = text.strip()
    if text in ("", "0"):
        return ()
    try:
        counts = {int(part) for part in text.split(",")}
    except ValueError:
        raise ValueError(f"--streams: expected counts like 1,4,8, got {text!r}") from None
    if min(counts) < 1:
        raise ValueError(f"--streams: stream counts must be >= 1, got {text!r}")
    return tuple(sorted(counts | {1}))


@contextlib.contextmanager
def serving_daemon(package: Path, threads: int, max_concurrent: int) -> Iterator[str]:
    """`e2edge serve` of `package` in a child process; yields its unix socket address."""
    with tempfile.TemporaryDirectory(prefix="e2edge-bench-llm-") as tmp:
        target = f"unix:{tmp}/daemon.sock"
        config_path = Path(tmp) / "daemon.yaml"
        config_path.write_text(
            f"listen: {target}\ngrace_period_s: 0\nlogging: {{level: WARNING}}\n"
            f"models:\n  - name: {MODEL_NAME}\n    path: {json.dumps(str(package))}\n"
            f"    threads: {threads}\n    max_concurrent: {max_concurrent}\n"
            f"    max_queue: {max_concurrent}\n"
        )
        with daemon_process(config_path):
            yield target


def _stream(client, ids: Sequence[int], new_tokens: int, release: threading.Barrier) -> dict:
    """One client's stream, started when all clients of the round are ready."""
    release.wait()
    first = last = None
    tokens = 0
    for message in client.generate(MODEL_NAME, ids, max_new_tokens=new_tokens, ignore_eos=True):
        if message.token_ids:
            last = time.perf_counter()
            first = first or last
            tokens += len(message.token_ids)
    done = time.perf_counter()
    if tokens != new_tokens:
        raise RuntimeError(f"a stream produced {tokens} tokens, not {new_tokens}")
    return {"first": first, "last": last, "done": done, "tokens": tokens}


def _round(clients: list, pool: ThreadPoolExecutor, ids: Sequence[int], new_tokens: int) -> dict:
    """All clients stream at once; aggregate and per-stream tokens/s of the round."""
    release = threading.Barrier(len(clients) + 1)
    futures = [pool.submit(_stream, client, ids, new_tokens, release) for client in clients]
    release.wait()
    start = time.perf_counter()
    streams = [f.result() for f in futures]
    wall_s = max(s["done"] for s in streams) - start
    return {
        "aggregate": sum(s["tokens"] for s in streams) / wall_s,
        "wall_s": wall_s,
        "per_stream": [(s["tokens"] - 1) / (s["last"] - s["first"]) for s in streams],
    }


def bench_streams(package: str | Path, ids: Sequence[int], new_tokens: int, runs: int,
                  threads: int, counts: Sequence[int]) -> dict:
    """Aggregate tokens/s at each count of concurrent streams through a real daemon."""
    from runtime.client import EdgeClient

    package = Path(package).expanduser().resolve()
    most = max(counts)
    results = []
    with serving_daemon(package, threads, most) as target:
        clients = [EdgeClient(target) for _ in range(most)]
        try:
            (info,) = clients[0].wait_loaded(timeout_s=LOAD_TIMEOUT_S)
            if info.error:
                raise RuntimeError(f"the daemon could not load {package}: {info.error}")
            with ThreadPoolExecutor(most) as pool:
                for n in counts:
                    _round(clients[:n], pool, ids, new_tokens)  # warm-up
                    rounds = [_round(clients[:n], pool, ids, new_tokens) for _ in range(runs)]
                    results.append(_summary(n, rounds))
        finally:
            for client in clients:
                client.close()
    single = results[0]["aggregate_tokens_per_s"]
    for r in results:
        r["speedup_vs_1"] = round(r["aggregate_tokens_per_s"] / single, 2)
    return {
        "method": "e2edge serve child process on a unix socket, one gRPC channel per stream; "
                  "aggregate = all tokens / (release -> last stream done)",
        "daemon": {"max_concurrent": most, "max_queue": most, "threads": threads},
        "new_tokens_per_stream": new_tokens,
        "results": results,
    }


def _summary(n: int, rounds: list[dict]) -> dict:
    per_stream = [rate for r in rounds for rate in r["per_stream"]]
    return {
        "streams": n,
        "aggregate_tokens_per_s": round(statistics.median(r["aggregate"] for r in rounds), 1),
        "aggregate_runs": [round(r["aggregate"], 1) for r in rounds],
        "wall_s": round(statistics.median(r["wall_s"] for r in rounds), 3),
        "per_stream_decode_tokens_per_s_median": round(statistics.median(per_stream), 1),
    }
