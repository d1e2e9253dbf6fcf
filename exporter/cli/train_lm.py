"""Train a small LLaMA or Gemma language model on a text corpus (a Hugging Face checkpoint).

Splits the corpus by characters (first 90 % train, last 10 % held out; a corpus given as
several --corpus parts splits each part so), builds the tokenizer
(a byte-level BPE trained on the train part, or a LLaMA-2 SentencePiece model), trains the
preset's model on the CPU (or the --device cuda GPU), prints the held-out perplexity beside
a unigram baseline, and writes config.json, model.safetensors, generation_config.json,
tokenizer.json and train_report.json to --out atomically. On the CPU, the same seed,
arguments and --threads give identical weights.

example:
  e2edge train lm --corpus tinyshakespeare.txt --arch llama --preset demo --out artifacts/demo-llama
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.llm.presets import ARCHS, PRESETS, get_preset

if TYPE_CHECKING:
    from exporter.text import TextSpec

DEFAULT_SPM = "llama2_tokenizer.model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--corpus", required=True, action="append", metavar="TEXT",
        help="UTF-8 text file: a path, or a data-file name such as tinyshakespeare.txt "
        "(looked up in $E2EDGE_DATA_DIR, else downloaded), or a slice of its characters, "
        "FILE@A:B; repeat to train on several texts (each split 90/10 on its own)",
    )
    parser.add_argument(
        "--tokenizer", default=None, metavar="bpe|SPM_MODEL",
        help="'bpe' trains a byte-level BPE on the corpus; otherwise a LLaMA-2 SentencePiece "
        f"tokenizer.model, as a path or data-file name ('spm' means {DEFAULT_SPM}); "
        "default: the preset's",
    )
    parser.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default: preset's)")
    parser.add_argument("--arch", choices=ARCHS, default="llama", help="model family")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="model size")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init and data order")
    parser.add_argument(
        "--time-budget-s", type=float, default=None,
        help="stop training after this many seconds (the result is then not reproducible)",
    )
    parser.add_argument(
        "--threads", type=int, default=2,
        help="CPU threads; part of what makes a run reproducible (default 2)",
    )
    parser.add_argument(
        "--device", default="cpu",
        help="torch device: cpu (default) or cuda, which runs the same recipe much faster",
    )


def resolved_part(spec: str) -> TextSpec:
    """One --corpus value as a TextSpec whose path is the file it names."""
    from e2edge.data import resolve_data_file
    from exporter.text import TextSpec

    part = TextSpec.parse(spec)
    return TextSpec(str(resolve_data_file(part.path)), part.start, part.end)


def run(args: argparse.Namespace) -> int:
    # Threads that spin while waiting slow everyone down on shared cores (measured: a demo
    # step took 3.4 s with spinning, 2.2 s without, 2 threads on 2 busy cores). OpenMP reads
    # this once, when torch is first imported, which happens just below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from e2edge.data import resolve_data_file
    from exporter.llm.tokenizer import TokenizerChoice
    from exporter.llm.training import LMTrainConfig, train_lm

    preset = get_preset(args.preset)
    corpus = tuple(resolved_part(spec) for spec in args.corpus)
    kind = args.tokenizer or preset.tokenizer
    if kind == "bpe":
        choice = TokenizerChoice("bpe", vocab_size=args.vocab_size or preset.vocab_size)
    else:
        spm_model = DEFAULT_SPM if kind == "spm" else kind
        choice = TokenizerChoice(
            "spm", vocab_size=args.vocab_size, spm_model=resolve_data_file(spm_model)
        )
    config = LMTrainConfig(
        corpus=corpus,
        out=args.out,
        arch=args.arch,
        preset=preset,
        tokenizer=choice,
        steps=preset.steps if args.steps is None else args.steps,
        seed=args.seed,
        threads=args.threads,
        time_budget_s=args.time_budget_s,
        device=args.device,
    )
    report = train_lm(config)
    print(f"heldout_ppl {report['heldout_ppl']}")
    print(f"unigram_ppl {report['unigram_ppl']}")
    print(f"wrote {args.out}")
    return 0
