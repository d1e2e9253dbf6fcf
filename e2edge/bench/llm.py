"""Benchmark LLM prefill/decode tokens/s against onnxruntime-genai, transformers and the roofline.

    e2edge bench llm --package PKG [--compare-ortgenai CKPT] [--compare-hf CKPT]
                     [--threads N] [--rounds 3] [--runs 5] [--same-process-check]
                     [--streams 1,4,8] [--json] [--out FILE]

Everything below is measured in one run and written into one JSON result. Every side
runs at the same explicit thread count (--threads, default this machine's cores; the
JSON records it), each in a process of its own, rounds alternating between sides
(llm_sides.py has why); a side's figure is the median over every timed run of every
round, with its spread.

- e2edge: this runtime, batch 1, the same --prompt-tokens prompt ids for every side,
  greedy decoding of exactly --new-tokens tokens (EOS ignored), one warm-up run, then
  --runs timed runs per round. prefill tokens/s = prompt tokens / prompt forward pass;
  decode tokens/s = (new tokens - 1) / (first token -> last token).
- --compare-ortgenai CKPT: onnxruntime-genai on a model its own builder makes from
  the Hugging Face checkpoint CKPT at the package's precision (fp32, int4 or int8,
  with the package's block size and accuracy level), cached in
  ~/.cache/e2edge/ortgenai so later runs skip the build; timed the same way, its
  intra_op_num_threads set to the bench's threads. Its first 16 greedy tokens are
  compared with the runtime's (greedy_tokens_match: they must agree for fp32).
  --same-process-check also alternates both run by run in this process
  (same_process.py) and reports how its speed-up agrees with the bench's.
- --compare-hf CKPT: transformers' eager generate on the checkpoint.
- memory bandwidth: a --threads-thread copy of a 1 GiB buffer (read + write bytes
  counted, STREAM copy); roofline tokens/s = bandwidth / bytes read per decoded
  token (every weight once: the package's weight bytes less the tables it only
  gathers one row from, such as an untied fp32 embedding). Decoding only reads, so
  the read ceiling is the best of three readers (read_ceiling.py: a reduction, the
  BLAS GEMV, onnxruntime's MatMul GEMV); a side above it gets no fraction and the
  JSON says the ceiling was under-measured.
- --streams 1,4,8: aggregate decode tokens/s of N concurrent Generate streams
  through a real `e2edge serve` child process, and each N's speed-up over 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from e2edge.bench.llm_runs import summarise_runs, timed_runs, turn
from e2edge.bench.result_file import save_result

PROMPT_TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
    "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
)
GREEDY_COMPARED = 16
ABLATION = "e2edge_ort_kernels"  # --kernel-ablation: e2edge with its own CPU kernels off
KERNEL_NOTES = ("int4_matmuls", "fp32_matmuls")  # the engine's: which kernel ran those matmuls


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", required=True, help="llm package directory")
    parser.add_argument("--compare-ortgenai", metavar="DIR",
                        help="Hugging Face checkpoint to build and time with onnxruntime-genai")
    parser.add_argument("--compare-hf", metavar="DIR", help="checkpoint for transformers eager")
    parser.add_argument("--streams", default="1,4,8",
                        help="concurrent Generate streams through the daemon, e.g. 1,4,8 "
                             "(default); '' or 0 skips it")
    parser.add_argument("--prompt-tokens", type=int, default=32,
                        help="prompt length in tokens, the same ids for every side")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per run (>= 2)")
    parser.add_argument("--runs", type=int, default=5,
                        help="timed runs per side and round (after one warm-up run)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each runs every side once, in a process of its own, "
                             "sides alternating (default 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of every side and of the bandwidth readers; "
                             "0 = this machine's cores (the JSON records the number)")
    parser.add_argument("--default-threads", action="store_true",
                        help="leave every side at its own runtime's default thread setting "
                             "(out of the box) instead of one explicit count")
    parser.add_argument("--same-process-check", action="store_true",
                        help="also alternate e2edge and onnxruntime-genai run by run in one "
                             "process (spinning off, a pause between sides) and report how "
                             "its speed-up agrees with the bench's")
    parser.add_argument("--kernel-ablation", "--int4-kernel-ablation", action="store_true",
                        dest="kernel_ablation",
                        help="also time e2edge with its own CPU kernels off (onnxruntime's "
                             "MatMulNBits and MatMul), as side e2edge_ort_kernels")
    parser.add_argument("--bandwidth-mib", type=int, default=1024,
                        help="buffer of the memory-bandwidth copy (default 1024); 0 skips it")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", help="also write the JSON to this file")


def prompt_ids(encode, vocab_size: int, length: int) -> list[int]:
    ids = encode(PROMPT_TEXT * (1 + length // 8))[:length]
    return [t % vocab_size for t in ids]


class RuntimeSide:
    """This runtime on a package, one greedy run at a time."""

    def __init__(self, package: str, ids: list[int], new_tokens: int, threads: int,
                 kernels: str | None = None):
        from runtime.llm.engine import LLMEngine
        from runtime.llm.sampling import SamplingParams

        self.engine = LLMEngine.load(package, threads=threads, int4_kernel=kernels,
                                     fp32_kernel=kernels)
        self.params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        self.ids = ids
        self.executor = self.engine.providers

    def run_once(self) -> tuple[float, float, list[int]]:
        """(prefill tokens/s, decode tokens/s, the generated ids) of one greedy run."""
        events = list(self.engine.generate(self.ids, self.params))
        stats = events[-1].stats
        tokens = [t for event in events for t in event.token_ids]
        return len(self.ids) / stats.prefill_s, stats.decode_tokens_per_s, tokens


def bench_runtime(package: str, ids: list[int], new_tokens: int, runs: int, threads: int,
                  kernels: str | None = None):
    side = RuntimeSide(package, ids, new_tokens, threads, kernels)
    result = timed_runs(side, runs)
    for key in KERNEL_NOTES:
        if getattr(side.engine, key):
            result[key] = getattr(side.engine, key)
    return result


def bench_transformers(model_dir: str, ids: list[int], new_tokens: int, runs: int, threads: int):
    import torch

    from exporter.llm.checkpoint import load_torch_model

    if threads:
        torch.set_num_threads(threads)
    model = load_torch_model(model_dir)
    model.config._attn_implementation = "eager"
    prompt = torch.tensor([ids])
    results = []
    for _ in range(runs + 1):
        streamer = _TimingStreamer()
        with turn(), torch.inference_mode():
            start = time.perf_counter()
            model(prompt)
            prefill_s = time.perf_counter() - start
            model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           streamer=streamer, pad_token_id=0)
        decode_s = streamer.times[-1] - streamer.times[0]
        results.append((len(ids) / prefill_s, (len(streamer.times) - 1) / decode_s))
    return summarise_runs(results[1:], [f"torch {torch.__version__} eager"])


class _TimingStreamer:
    """transformers streamer that timestamps each generated token."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _speedups(result: dict, side: str, suffix: str) -> None:
    """e2edge / `side` for decode and prefill, as result[...speedup_vs_<suffix>]."""
    for phase in ("decode", "prefill"):
        result[f"{phase}_speedup_vs_{suffix}"] = round(
            result["e2edge"][f"{phase}_tokens_per_s"] / result[side][f"{phase}_tokens_per_s"], 2
        )


def run(args: argparse.Namespace) -> int:
    from e2edge.bench.llm_sides import SideJob, run_alternating
    from e2edge.bench.llm_streams import bench_streams, parse_streams
    from e2edge.bench.memory_bandwidth import (
        bytes_read_per_token,
        measure_copy_bandwidth,
        roofline_tokens_per_s,
    )
    from e2edge.bench.ortgenai import compare_greedy
    from e2edge.bench.read_ceiling import fraction_of_ceiling, measure_read_ceiling
    from runtime.host_facts import machine_facts
    from runtime.llm.tokenizer import Tokenizer
    from runtime.package import load_package

    if args.new_tokens < 2 or args.runs < 1 or args.rounds < 1 or args.bandwidth_mib < 0:
        raise ValueError("--new-tokens must be >= 2, --runs and --rounds >= 1 and "
                         "--bandwidth-mib >= 0")
    # Every side gets the same count, written down; or, --default-threads, each its own
    # runtime's default (what a user gets out of the box), recorded as 0.
    threads = 0 if args.default_threads else args.threads or os.cpu_count() or 1
    streams = parse_streams(args.streams)
    if args.compare_ortgenai:  # fail before the long measurements, not after them
        from e2edge.bench.ortgenai import checkpoint_files, import_ortgenai

        import_ortgenai()
        checkpoint_files(Path(args.compare_ortgenai))
    package = load_package(args.package)
    llm = package.manifest["llm"]
    tokenizer = Tokenizer(package.file("tokenizer.json"), llm.get("bos_token_id"), False)
    ids = prompt_ids(tokenizer.encode, llm["vocab_size"], args.prompt_tokens)
    quantization = package.manifest.get("quantization")
    result = {
        "benchmark": "llm",
        "machine": machine_facts(),
        "package": {"path": str(package.root), "name": package.name,
                    "parameters": package.manifest["parameters"],
                    "weight_bytes": package.manifest["weight_bytes"],
                    "quantization": quantization},
        "batch": 1,
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "rounds": args.rounds,
        "threads": threads,
        "thread_setting": ("each runtime's own default" if args.default_threads
                           else "one explicit count for every side"),
        "method": "each side in its own process per round, sides alternating; medians over "
                  "every timed run of every round",
    }
    # Bandwidth first, while no onnxruntime thread pool of this process exists.
    bandwidth = read = None
    if args.bandwidth_mib:
        readers_threads = threads or os.cpu_count() or 1
        bandwidth = measure_copy_bandwidth(readers_threads, args.bandwidth_mib << 20)
        result["memory_bandwidth"] = bandwidth.to_json()
        read, readers = measure_read_ceiling(readers_threads, args.bandwidth_mib << 20)
        result["read_bandwidth"] = {**read.to_json(), "readers": readers}
    jobs = [SideJob("e2edge", str(package.root), tuple(ids), args.new_tokens, args.runs,
                    threads)]
    if args.kernel_ablation:
        jobs.append(SideJob(ABLATION, str(package.root), tuple(ids), args.new_tokens, args.runs,
                            threads, kernels="off"))
    if args.compare_ortgenai:
        jobs.append(SideJob("ortgenai", args.compare_ortgenai, tuple(ids), args.new_tokens,
                            args.runs, threads, quantization))
    if args.compare_hf:
        jobs.append(SideJob("transformers_eager", args.compare_hf, tuple(ids), args.new_tokens,
                            args.runs, threads))
    result.update(run_alternating(jobs, args.rounds))
    ours = result["e2edge"].pop("token_ids")
    result["e2edge"]["first_token_ids"] = ours[:GREEDY_COMPARED]
    if "token_ids" in result.get(ABLATION, {}):
        ablation = result[ABLATION]
        ablation.update(compare_greedy(ours, ablation.pop("token_ids"), len(ours)))
        _speedups(result, ABLATION, "ort_kernels")
    if "ortgenai" in result and "skipped" not in result["ortgenai"]:
        peer = result["ortgenai"]
        theirs = peer.pop("token_ids")
        peer["first_token_ids"] = theirs[:GREEDY_COMPARED]
        peer.update(compare_greedy(ours, theirs, GREEDY_COMPARED))
        _speedups(result, "ortgenai", "ortgenai")
        if args.same_process_check:
            from e2edge.bench.same_process import alternate_in_one_process

            check = alternate_in_one_process(
                str(package.root), args.compare_ortgenai, quantization, ids, args.new_tokens,
                args.runs * args.rounds, threads)
            check["bench_decode_speedup"] = result["decode_speedup_vs_ortgenai"]
            check["agreement"] = round(check["decode_speedup"]
                                       / result["decode_speedup_vs_ortgenai"], 3)
            result["same_process_check"] = check
    if "transformers_eager" in result:
        result["transformers_eager"].pop("token_ids", None)
        _speedups(result, "transformers_eager", "transformers")
    if bandwidth is not None:
        _ceilings(result, package, bandwidth, read, bytes_read_per_token, roofline_tokens_per_s,
                  fraction_of_ceiling)
    if streams:
        result["streams"] = bench_streams(package.root, ids, args.new_tokens, args.runs,
                                          threads, streams)
    text = save_result(result, args.out)
    if args.json:
        print(text)
    else:
        print_table(result, sys.stdout)
    return 0


def _ceilings(result, package, bandwidth, read, bytes_read_per_token, roofline_tokens_per_s,
              fraction_of_ceiling) -> None:
    """The roofline (copy bandwidth) and the read ceiling, and each side's share of them."""
    weight_bytes = package.manifest["weight_bytes"]
    per_token, tables = bytes_read_per_token(package.onnx_path, weight_bytes)
    roofline = roofline_tokens_per_s(bandwidth, per_token)
    read_ceiling = roofline_tokens_per_s(read, per_token)
    result["roofline"] = {
        "bytes_per_token": per_token,
        "bytes_per_token_source": "the package's weight_bytes less the gather-only tables, "
                                  "of which a decode step reads one row each",
        "gather_only_tables": tables,
        "weight_bytes": weight_bytes,
        "bandwidth_gb_s": bandwidth.to_json()["best_gb_s"],
        "weight_bytes_roofline_tokens_per_s": round(
            roofline_tokens_per_s(bandwidth, weight_bytes), 1),
        "read_gb_s": read.to_json()["best_gb_s"],
    }
    result["roofline_tokens_per_s"] = round(roofline, 1)
    # What a decode that only streamed its weights could reach at the best reader's rate.
    result["read_ceiling_tokens_per_s"] = round(read_ceiling, 1)
    for side in ("e2edge", ABLATION, "ortgenai", "transformers_eager"):
        if side in result and "decode_tokens_per_s" in result[side]:
            decode = result[side]["decode_tokens_per_s"]
            result[side]["fraction_of_roofline"] = round(decode / roofline, 3)
            result[side].update(fraction_of_ceiling(decode, read_ceiling))


def print_table(result: dict, out) -> None:
    rows = [(name, result[key]) for key, name in (
        ("e2edge", "e2edge"), (ABLATION, "e2edge, ort kernels"),
        ("ortgenai", "onnxruntime-genai"), ("transformers_eager", "transformers eager"),
    ) if key in result and "decode_tokens_per_s" in result[key]]
    threads = result["threads"] or "each runtime's default"
    print(f"threads: {threads} on every side; {result['rounds']} rounds, each side in its own "
          f"process, alternating; medians of every timed run", file=out)
    print(f"{'':20s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'spread':>8s} "
          f"{'of roofline':>12s} {'of read ceiling':>16s}", file=out)

    def share(fraction: float | None, width: int) -> str:
        return f"{100 * fraction:{width - 1}.1f}%" if fraction is not None else "-".rjust(width)

    for name, r in rows:
        spread = r.get("decode_spread", {}).get("relative")
        print(f"{name:20s} {r['prefill_tokens_per_s']:14.1f} {r['decode_tokens_per_s']:13.1f} "
              f"{share(spread, 8)} {share(r.get('fraction_of_roofline'), 12)} "
              f"{share(r.get('fraction_of_read_ceiling'), 16)}", file=out)
        if r.get("read_ceiling_under_measured"):
            print(f"  {name} decodes at {r['above_read_ceiling_by']}x the measured read "
                  f"ceiling: the ceiling was under-measured on this host, no fraction given",
                  file=out)
    if "skipped" in result.get("ortgenai", {}):
        print(f"onnxruntime-genai skipped: {result['ortgenai']['skipped']}", file=out)
    if "greedy_tokens_match" in result.get("ortgenai", {}):
        peer = result["ortgenai"]
        verdict = ("match" if peer["greedy_tokens_match"]
                   else f"differ from token {peer['greedy_first_mismatch']}")
        print(f"greedy tokens vs onnxruntime-genai ({peer['greedy_tokens_compared']}): {verdict}",
              file=out)
    check = result.get("same_process_check")
    if check and "skipped" not in check:
        print(f"same-process alternating check: decode speed-up {check['decode_speedup']}x "
              f"(the bench's / the check's: {check['agreement']})", file=out)
    for key in KERNEL_NOTES:
        if key in result.get("e2edge", {}):
            print(f"e2edge {key.replace('_', ' ')}: {result['e2edge'][key]}", file=out)
    for suffix, name in (("ort_kernels", "e2edge on onnxruntime's own kernels"),
                         ("ortgenai", "onnxruntime-genai"), ("transformers", "transformers")):
        if f"decode_speedup_vs_{suffix}" in result:
            print(f"decode speed-up vs {name}: {result[f'decode_speedup_vs_{suffix}']}x, prefill "
                  f"{result[f'prefill_speedup_vs_{suffix}']}x", file=out)
    if "roofline" in result:
        bw = result["memory_bandwidth"]
        print(f"memory bandwidth {bw['best_gb_s']} GB/s (best, {bw['threads']}-thread copy, read "
              f"+ write) / {result['roofline']['bytes_per_token'] / 1e6:.1f} MB per token = "
              f"roofline {result['roofline_tokens_per_s']} tok/s", file=out)
        print(f"read ceiling {result['roofline']['read_gb_s']} GB/s (best "
              f"{result['read_bandwidth']['method'].split(' of ')[0]}) = "
              f"{result['read_ceiling_tokens_per_s']} tok/s", file=out)
    for r in result.get("streams", {}).get("results", []):
        print(f"{r['streams']} concurrent stream(s) through the daemon: "
              f"{r['aggregate_tokens_per_s']} tok/s aggregate ({r['speedup_vs_1']}x of 1), "
              f"{r['per_stream_decode_tokens_per_s_median']} tok/s per stream", file=out)
