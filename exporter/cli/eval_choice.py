"""Zero-shot multiple-choice accuracy of a checkpoint or package by log-likelihood.

--tasks is lm-eval-style JSONL, one {"context": ..., "choices": [...], "label": i} a
line (e.g. BoolQ, PIQA, ARC converted to that shape). Reports accuracy by the sum of
the choice's token log-probabilities and by log-probability per byte (acc_norm).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint or package directory")
    parser.add_argument("--tasks", required=True, help="JSONL file of records")
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: auto)")
    parser.add_argument("--json", help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from exporter.llm.evaluation import choice_accuracy, open_scorer, read_choice_tasks
    from exporter.text import resolve_text_path

    records = read_choice_tasks(resolve_text_path(args.tasks))
    if args.limit:
        records = records[: args.limit]
    scorer = open_scorer(args.model, threads=args.threads)
    result = choice_accuracy(scorer, records)
    print(f"acc {result.accuracy:.4f}  acc_norm {result.accuracy_norm:.4f}  "
          f"({result.records} records)")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"model": args.model, "tasks": args.tasks, **asdict(result)}, indent=2) + "\n")
    return 0
