"""Benchmark LLM prefill and decode tokens/s of a package, optionally against transformers.

Batch 1, a fixed prompt, greedy decoding of --new-tokens tokens with EOS ignored,
one warm-up run, then the median of --runs. With --compare-hf DIR the same is
measured in the same run for transformers' eager generate on the checkpoint, and
the ratio is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from e2edge.bench.result_file import save_result

PROMPT_TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
    "First Citizen: You are all resolved rather to die than to famish? All: Resolved. "
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", required=True, help="llm package directory")
    parser.add_argument("--compare-hf", metavar="DIR", help="checkpoint for transformers eager")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0 = all cores")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", help="also write the JSON to this file")


def prompt_ids(encode, vocab_size: int, length: int) -> list[int]:
    ids = encode(PROMPT_TEXT * (1 + length // 8))[:length]
    return [t % vocab_size for t in ids]


def bench_runtime(package: str, ids: list[int], new_tokens: int, runs: int, threads: int):
    from runtime.llm.engine import LLMEngine
    from runtime.llm.sampling import SamplingParams

    engine = LLMEngine.load(package, threads=threads)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    results = []
    for _ in range(runs + 1):  # the first run is the warm-up
        stats = [e.stats for e in engine.generate(ids, params) if e.stats][0]
        results.append((len(ids) / stats.prefill_s, stats.decode_tokens_per_s))
    return _summary(results[1:], engine.providers)


def bench_transformers(model_dir: str, ids: list[int], new_tokens: int, runs: int, threads: int):
    import torch

    from exporter.hf_checkpoint import load_torch_model

    if threads:
        torch.set_num_threads(threads)
    model = load_torch_model(model_dir)
    model.config._attn_implementation = "eager"
    prompt = torch.tensor([ids])
    results = []
    for _ in range(runs + 1):
        streamer = _TimingStreamer()
        with torch.inference_mode():
            start = time.perf_counter()
            model(prompt)
            prefill_s = time.perf_counter() - start
            model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           streamer=streamer, pad_token_id=0)
        decode_s = streamer.times[-1] - streamer.times[0]
        results.append((len(ids) / prefill_s, (len(streamer.times) - 1) / decode_s))
    return _summary(results[1:], [f"torch {torch.__version__} eager"])


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


def _summary(results: list[tuple[float, float]], executor: list[str]) -> dict:
    return {
        "executor": executor,
        "prefill_tokens_per_s": round(statistics.median(r[0] for r in results), 1),
        "decode_tokens_per_s": round(statistics.median(r[1] for r in results), 1),
        "decode_runs": [round(r[1], 1) for r in results],
    }


def run(args: argparse.Namespace) -> int:
    from e2edge.bench.machine import machine_facts
    from runtime.llm.tokenizer import Tokenizer
    from runtime.package import load_package

    package = load_package(args.package)
    llm = package.manifest["llm"]
    tokenizer = Tokenizer(package.file("tokenizer.json"), llm.get("bos_token_id"), False)
    ids = prompt_ids(tokenizer.encode, llm["vocab_size"], args.prompt_tokens)
    result = {
        "benchmark": "llm",
        "machine": machine_facts(),
        "package": {"path": str(package.root), "name": package.name,
                    "parameters": package.manifest["parameters"],
                    "weight_bytes": package.manifest["weight_bytes"],
                    "quantization": package.manifest.get("quantization")},
        "batch": 1,
        "prompt_tokens": len(ids),
        "new_tokens": args.new_tokens,
        "runs": args.runs,
        "e2edge": bench_runtime(args.package, ids, args.new_tokens, args.runs, args.threads),
    }
    if args.compare_hf:
        hf = bench_transformers(args.compare_hf, ids, args.new_tokens, args.runs, args.threads)
        result["transformers_eager"] = hf
        result["decode_speedup_vs_transformers"] = round(
            result["e2edge"]["decode_tokens_per_s"] / hf["decode_tokens_per_s"], 2
        )
        result["prefill_speedup_vs_transformers"] = round(
            result["e2edge"]["prefill_tokens_per_s"] / hf["prefill_tokens_per_s"], 2
        )
    text = save_result(result, args.out)
    if args.json:
        print(text)
    else:
        _print_table(result, sys.stdout)
    return 0


def _print_table(result: dict, out) -> None:
    rows = [("e2edge", result["e2edge"])]
    if "transformers_eager" in result:
        rows.append(("transformers eager", result["transformers_eager"]))
    print(f"{'':20s} {'prefill tok/s':>14s} {'decode tok/s':>13s}", file=out)
    for name, r in rows:
        print(f"{name:20s} {r['prefill_tokens_per_s']:14.1f} {r['decode_tokens_per_s']:13.1f}",
              file=out)
    if "decode_speedup_vs_transformers" in result:
        print(f"decode speed-up vs transformers: {result['decode_speedup_vs_transformers']}x",
              file=out)
