"""The exporter's commands build their parsers without torch, from the options' own defaults."""

from __future__ import annotations

import subprocess
import sys

from e2edge.cli import build_parser
from exporter.cli.prune import build_options
from exporter.magrip.options import PruneOptions, SweepOptions

BUILD_ALL_PARSERS = (
    "import sys\n"
    "from e2edge.cli import build_parser\n"
    "build_parser()\n"
    "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
)


def test_building_every_parser_imports_no_torch():
    """`e2edge --help` (and `e2edge serve` on a box without torch) must not wait for it."""
    run = subprocess.run([sys.executable, "-c", BUILD_ALL_PARSERS], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_prune_without_options_prunes_with_the_options_defaults():
    args = build_parser().parse_args(["prune", "--model", "m", "--calib", "c", "--ratio", "0.3",
                                      "--out", "o"])
    assert build_options(args, args.ratio) == PruneOptions(ratio=0.3)


def test_a_sweep_without_options_measures_with_the_sweep_defaults():
    args = build_parser().parse_args(["prune", "--model", "m", "--calib", "c", "--sweep", "0.3",
                                      "--report", "r"])
    defaults = SweepOptions(ratios=(0.3,), eval_texts=())
    assert args.methods.split(",") == list(defaults.methods)
    assert (args.eval_max_tokens, args.decode_tokens, args.decode_rounds, args.threads) == (
        defaults.eval_max_tokens, defaults.decode_tokens, defaults.decode_rounds, defaults.threads)
