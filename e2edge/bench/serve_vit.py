"""Classify throughput and latency through the daemon, with dynamic batching off and on.

    e2edge bench serve-vit --package PKG [--clients 1,8,32] [--duration 3] [--json] [--out FILE]

One daemon serves the package twice, as two models: `unbatched` (max_batch 1) and
`batched` (--max-batch, --max-delay-ms), so both sides run in the same daemon in the
same run. Each client is a coroutine of one grpc.aio loop in this process, with its
own channel, sending one image per Classify request and the next as soon as the
answer is in (closed loop). At each client count both sides are warmed up, then
timed in --rounds alternating windows (unbatched, batched, unbatched, ...) that add
up to --duration seconds per side, so load from elsewhere on a shared machine hits
both sides alike. The images are the model's size, encoded as PNG (--input png,
what a clinical client sends) or raw uint8 tensors (--input tensor, a camera), from
--images NPZ (MedMNIST layout) or random pixels.

Reported per (batching, clients): images/s over the timed window, p50/p99 of the
round trip seen by the clients, the mean batch size the daemon ran, and its mean
decode / queue / inference split. The "batching_check" says whether batching pays at
the largest client count: batched throughput >= 2x unbatched, with batched p99 < 4x p50.

With --ceiling the same daemon also serves, batched and in the same alternating
windows, a package that mirrors this one with a graph that does no work
(e2edge/bench/null_vision_package.py; rows with batching "ceiling"): what the daemon
serves with these images and clients when the model costs nothing, i.e. whether the
model or the rest of each request (gRPC, decoding, hand-offs) limits throughput.
It is not a strict bound: a free model also frees its worker at once, so its batches
are smaller and the per-batch costs come more often (with 28 px PNGs on 2 cores the
real model, batched, was served faster than its no-op twin).

The daemon runs as `e2edge serve` in a child process on a unix socket (--daemon
process, the default: clients and daemon do not share an interpreter) or on a
thread of this process (--daemon thread).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from e2edge.bench.daemon_process import daemon_process
from e2edge.bench.result_file import save_result

# Batching makes each request wait for its batch: under many clients it must at least
# double the images served to be worth that wait ...
MIN_BATCHED_SPEEDUP = 2.0
# ... and must not buy throughput with a long tail of slow requests.
MAX_BATCHED_P99_OVER_P50 = 4.0
MODES = {"unbatched": "off", "batched": "on"}  # model name in the daemon -> batching
CEILING = {"ceiling": "ceiling"}  # --ceiling: the no-op package, batched like "batched"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", required=True, help="vision model package directory")
    parser.add_argument("--clients", default="1,8,32", help="client counts (default 1,8,32)")
    parser.add_argument("--duration", type=float, default=4.0,
                        help="timed seconds per (batching, clients) (default 4)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="alternating windows the duration is cut into (default 8)")
    parser.add_argument("--warmup", type=float, default=0.5,
                        help="untimed seconds per side at each client count")
    parser.add_argument("--max-batch", type=int, default=16, help="batched side (default 16)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0,
                        help="batched side's window (default 2)")
    parser.add_argument("--input", choices=("png", "tensor"), default="png",
                        help="how images are sent (default png)")
    parser.add_argument("--images", metavar="NPZ",
                        help="MedMNIST-style npz whose test_images are sent: a path, or a "
                             "data-file name such as retinamnist.npz (default: random)")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime threads per model (0 = all cores)")
    parser.add_argument("--daemon", choices=("process", "thread"), default="process",
                        help="run the daemon as a child process (default) or a thread")
    parser.add_argument("--ceiling", action="store_true",
                        help="also serve a no-op copy of the package, batched: what the "
                             "daemon serves when the model costs nothing")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", help="also write the JSON result to this file")


def _images(package, npz: Path | None, kind: str, count: int = 64) -> list:
    """`count` Image messages of the model's input size."""
    import io

    import numpy as np
    from PIL import Image

    from runtime.server.edge.convert import encoded_image, tensor_message
    from runtime.vision.preprocess import Preprocessing

    spec = Preprocessing.from_dict(package.manifest["preprocessing"])
    if npz:
        pixels = np.load(npz)["test_images"][:count]
    else:
        shape = (count, spec.size, spec.size) + ((3,) if spec.channels == 3 else ())
        pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    messages = []
    for image in pixels:
        if kind == "tensor":
            messages.append(tensor_message(image))
        else:
            out = io.BytesIO()
            Image.fromarray(image).save(out, format="PNG")
            messages.append(encoded_image(out.getvalue()))
    return messages


def _config_text(listen: str, package: Path, threads: int, max_batch: int,
                 max_delay_ms: float, ceiling: Path | None = None) -> str:
    models = ""
    batched = f"{{max_batch: {max_batch}, max_delay_ms: {max_delay_ms}}}"
    served = [("unbatched", package, "{max_batch: 1}"), ("batched", package, batched)]
    if ceiling is not None:
        served.append(("ceiling", ceiling, batched))
    for name, path, batching in served:
        models += (f"  - name: {name}\n    path: {json.dumps(str(path))}\n"
                   f"    threads: {threads}\n    max_queue: 256\n    batching: {batching}\n")
    return (f"listen: {listen}\ngrace_period_s: 0\nlogging: {{level: WARNING}}\n"
            f"power: {{source: none}}\nmodels:\n{models}")


@contextlib.contextmanager
def _daemon(mode: str, text: str) -> Iterator[tuple[str, int | None]]:
    """A daemon serving the config `text`; yields its address and its process id (None
    when it runs on a thread of this process)."""
    with tempfile.TemporaryDirectory(prefix="e2edge-bench-vit-") as tmp:
        target = f"unix:{tmp}/daemon.sock"
        config_path = Path(tmp) / "daemon.yaml"
        config_path.write_text(text.replace("listen: LISTEN", f"listen: {target}"))
        if mode == "thread":
            from runtime.config import load_config
            from runtime.server.in_process import DaemonThread

            with DaemonThread(load_config(config_path), grace_s=0) as daemon:
                yield daemon.target, None
            return
        with daemon_process(config_path) as child:
            yield target, child.pid


def _measure(target: str, images: list, clients: int, rounds: int, window_s: float,
             warmup_s: float, models: tuple[str, ...] = tuple(MODES),
             daemon_pid: int | None = None) -> dict[str, dict]:
    """Each model at `clients` closed-loop clients, alternating windows; stats per model.

    The clients are coroutines of one grpc.aio event loop, each with its own channel:
    far cheaper than a thread per client, so the client side stays a small part of
    a shared machine's CPU. With `daemon_pid` (a daemon in its own process) each model's
    stats also say how much CPU the daemon and the clients used per image.
    """
    import asyncio

    import grpc

    from e2edge.bench.process_cpu import own_cpu_s, process_cpu_s
    from runtime.proto.e2edge.v1 import runtime_pb2 as pb
    from runtime.proto.e2edge.v1 import runtime_pb2_grpc as pb_grpc

    if daemon_pid is not None and process_cpu_s(daemon_pid) is None:
        daemon_pid = None  # its CPU cannot be read here (not Linux): no CPU columns

    def cpu_now() -> tuple[float, float]:
        return (process_cpu_s(daemon_pid) if daemon_pid is not None else 0.0), own_cpu_s()

    cpu = {model: [0.0, 0.0] for model in models}  # daemon, clients: CPU seconds per model

    async def closed_loop(stubs, model: str, seconds: float) -> list:
        end = time.perf_counter() + seconds

        async def client(i: int) -> list:
            runs, n = [], i
            while (sent := time.perf_counter()) < end:
                request = pb.ClassifyRequest(model=model, images=[images[n % len(images)]])
                stats = (await stubs[i].Classify(request)).stats
                runs.append((sent, time.perf_counter(), stats))
                n += clients
            return runs

        per_client = await asyncio.gather(*(client(i) for i in range(len(stubs))))
        # Only requests answered inside the window count, as the throughput is per window.
        return [run for runs in per_client for run in runs if run[1] <= end]

    async def main() -> dict[str, list]:
        channels = [grpc.aio.insecure_channel(target) for _ in range(clients)]
        try:
            stubs = [pb_grpc.EdgeRuntimeStub(channel) for channel in channels]
            await asyncio.gather(*(stub.ListModels(pb.ListModelsRequest()) for stub in stubs))
            for model in models:
                await closed_loop(stubs, model, warmup_s)
            timed: dict[str, list] = {model: [] for model in models}
            for _ in range(rounds):
                for model in models:
                    before = cpu_now()
                    timed[model] += await closed_loop(stubs, model, window_s)
                    cpu[model] = [total + now - then for total, now, then
                                  in zip(cpu[model], cpu_now(), before)]
            return timed
        finally:
            await asyncio.gather(*(channel.close() for channel in channels))

    summaries = {}
    for model, runs in asyncio.run(main()).items():
        summary = _summary(runs, rounds * window_s)
        if daemon_pid is not None:
            summary.update(_cpu_per_image(cpu[model], len(runs), rounds * window_s))
        summaries[model] = summary
    return summaries


def _cpu_per_image(cpu_s: list[float], images: int, seconds: float) -> dict:
    """CPU milliseconds per image of the daemon and of the clients, and cores in use."""
    daemon_s, clients_s = cpu_s
    if images == 0:
        return {}
    return {
        "daemon_cpu_ms_per_image": round(1e3 * daemon_s / images, 3),
        "client_cpu_ms_per_image": round(1e3 * clients_s / images, 3),
        "cores_busy": round((daemon_s + clients_s) / seconds, 2),
    }


def _summary(runs: list, seconds: float) -> dict:
    import numpy as np

    if not runs:
        raise RuntimeError("no request finished inside the timed windows")
    latencies = np.array([(done - sent) * 1e3 for sent, done, _ in runs])
    stats = [s for *_, s in runs]

    def mean_ms(name: str) -> float:
        return round(1e3 * float(np.mean([getattr(s, name) for s in stats])), 3)

    return {
        "requests": len(runs),
        "images_per_s": round(len(runs) / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "mean_batch": round(float(np.mean([s.batch_size for s in stats])), 2),
        "daemon_decode_ms": mean_ms("decode_s"),
        "daemon_queue_ms": mean_ms("queue_s"),
        "daemon_inference_ms": mean_ms("inference_s"),
    }


def bench_serve_vit(args: argparse.Namespace) -> dict:
    from e2edge.data import resolve_data_file
    from runtime.client import EdgeClient
    from runtime.host_facts import machine_facts
    from runtime.package import load_package

    client_counts = [int(c) for c in args.clients.split(",")]
    if min(client_counts) < 1 or args.duration <= 0 or args.max_batch < 2 or args.rounds < 1:
        raise ValueError("--clients and --rounds must be >= 1, --duration > 0 and "
                         "--max-batch >= 2")
    path = Path(args.package).expanduser().resolve()
    package = load_package(path)
    if package.kind != "vision":
        raise ValueError(f"{path}: kind {package.kind!r}; serve-vit needs a vision package")
    # A name resolves as every data file does (E2EDGE_DATA_DIR, then the download cache).
    npz = resolve_data_file(args.images) if args.images else None
    images = _images(package, npz, args.input)
    sides = {**MODES, **(CEILING if args.ceiling else {})}
    results = []
    with contextlib.ExitStack() as stack:
        null = None
        if args.ceiling:
            from e2edge.bench.null_vision_package import write_null_package

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="e2edge-null-")))
            null = write_null_package(package, tmp / "null")
        text = _config_text("LISTEN", path, args.threads, args.max_batch, args.max_delay_ms,
                            null)
        target, daemon_pid = stack.enter_context(_daemon(args.daemon, text))
        with EdgeClient(target) as client:
            for info in client.wait_loaded(timeout_s=120):
                if info.error:
                    raise RuntimeError(f"the daemon could not load {info.name} ({path}): "
                                       f"{info.error}")
        for clients in client_counts:
            rows = _measure(target, images, clients, args.rounds,
                            args.duration / args.rounds, args.warmup, tuple(sides), daemon_pid)
            for model, batching in sides.items():
                row = rows[model]
                results.append({"batching": batching, "clients": clients, **row})
                print(f"  batching {batching:7} {clients:3} clients: {row['images_per_s']:8.1f} "
                      f"img/s  p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                      f"batch {row['mean_batch']:5.2f}", file=sys.stderr, flush=True)
    result = {
        "benchmark": "serve-vit",
        "package": str(path),
        "package_name": package.name,
        "image_size": package.manifest["preprocessing"]["size"],
        "input": args.input,
        "images": str(npz) if npz else "random",
        "daemon_mode": args.daemon,
        "threads": args.threads,
        "batched": {"max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms},
        "duration_s": args.duration,
        "rounds": args.rounds,
        "results": results,
        "host": machine_facts(),
    }
    top = max(client_counts)
    by = {(r["batching"], r["clients"]): r for r in results}
    off, on = by["off", top], by["on", top]
    speedup = on["images_per_s"] / off["images_per_s"]
    tail = on["p99_ms"] / on["p50_ms"]
    result["batching_check"] = {
        "clients": top,
        "speedup": round(speedup, 3),
        "batched_p99_over_p50": round(tail, 3),
        "min_speedup": MIN_BATCHED_SPEEDUP,
        "max_p99_over_p50": MAX_BATCHED_P99_OVER_P50,
        "meets_speedup": speedup >= MIN_BATCHED_SPEEDUP,
        "meets_tail": tail < MAX_BATCHED_P99_OVER_P50,
    }
    if args.ceiling:
        ceiling = by["ceiling", top]["images_per_s"]
        result["batching_check"]["ceiling_images_per_s"] = ceiling
        result["batching_check"]["ceiling_over_unbatched"] = round(
            ceiling / off["images_per_s"], 3)
    return result


def format_result(result: dict) -> str:
    lines = [f"bench serve-vit: {result['package_name']} ({result['image_size']} px, "
             f"{result['input']} input, daemon as a {result['daemon_mode']}), batched = "
             f"max_batch {result['batched']['max_batch']}, max_delay_ms "
             f"{result['batched']['max_delay_ms']}"]
    lines.append("  batching clients   images/s   p50 ms   p99 ms  batch  decode/queue/infer ms"
                 "  CPU ms/img daemon+clients, cores busy")
    for r in result["results"]:
        cpu = (f"  {r['daemon_cpu_ms_per_image']:.2f}+{r['client_cpu_ms_per_image']:.2f}, "
               f"{r['cores_busy']:.2f}" if "cores_busy" in r else "")
        lines.append(
            f"  {r['batching']:8} {r['clients']:7} {r['images_per_s']:10.1f} {r['p50_ms']:8.2f} "
            f"{r['p99_ms']:8.2f} {r['mean_batch']:6.2f}  {r['daemon_decode_ms']:.2f}/"
            f"{r['daemon_queue_ms']:.2f}/{r['daemon_inference_ms']:.2f}{cpu}")
    g = result["batching_check"]
    lines.append(
        f"  at {g['clients']} clients: batched/unbatched throughput {g['speedup']:.2f}x "
        f"({'meets' if g['meets_speedup'] else 'misses'} the {g['min_speedup']:g}x minimum); "
        f"batched p99/p50 {g['batched_p99_over_p50']:.2f} "
        f"({'meets' if g['meets_tail'] else 'misses'} the < {g['max_p99_over_p50']:g} limit)")
    if "ceiling_over_unbatched" in g:
        lines.append(
            f"  the same daemon with a no-op model, batched: {g['ceiling_images_per_s']:.1f} "
            f"images/s = {g['ceiling_over_unbatched']:.2f}x unbatched")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = bench_serve_vit(args)
    text = save_result(result, args.out)
    print(text if args.json else format_result(result))
    return 0
