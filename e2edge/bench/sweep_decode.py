"""Re-time the packages of a finished pruning sweep (`e2edge prune --sweep ... --keep-artifacts`).

    e2edge bench sweep-decode --report DIR [--rounds 9] [--tokens 96] [--threads 1]

The sweep times its packages at its end, round-robin, best of its rounds; on a
machine whose load changed since, or to use more rounds, this re-times the same kept
packages the same way and rewrites the speeds, the speed-up over the weight-bytes
ratio and the checks in DIR/sweep.json (perplexities stay: they do not depend on timing).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", required=True, help="the sweep's report directory")
    parser.add_argument("--rounds", type=int, default=9,
                        help="round-robin rounds (the best counts)")
    parser.add_argument("--tokens", type=int, default=96, help="greedy tokens per timing")
    parser.add_argument("--threads", type=int, default=0,
                        help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--json", action="store_true", help="print the speed check as JSON")


def run(args: argparse.Namespace) -> int:
    from exporter.magrip.options import SweepOptions
    from exporter.magrip.report import remeasure_decode

    sweep = SweepOptions(ratios=(0.5,), eval_texts=(), decode_tokens=args.tokens,
                         decode_rounds=args.rounds, threads=args.threads)
    report = remeasure_decode(args.report, sweep)
    check = report["checks"]["decode_speedup_at_least_90pct_of_bytes_ratio"]
    if args.json:
        print(json.dumps(check, indent=2))
        return 0
    dense = report["dense"]["decode_tokens_per_s"]
    print(f"dense {dense:.1f} tok/s; speed-up / weight-bytes ratio per package:")
    for cell in check["cells"]:
        tuned = " + fine-tune" if cell["finetuned"] else ""
        flag = "" if cell["ok"] else "   < 0.9"
        print(f"  {cell['method']:9s} {cell['ratio']:.2f}{tuned:12s} "
              f"{cell['speedup_over_bytes_bound']:.3f}{flag}")
    print(f"speed check (every package >= 0.9): {'met' if check['ok'] else 'not met'}")
    return 0
