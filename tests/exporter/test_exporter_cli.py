"""The exporter's commands build their parsers without torch, from the options' own defaults."""

from __future__ import annotations

import subprocess
import sys

from e2edge.cli import build_parser
from exporter.cli.prune import build_options
from exporter.magrip.options import PruneOptions, SweepOptions


def _modules_imported_by(code: str) -> set[str]:
    """Top-level modules a fresh interpreter imports to run `code` (python -X importtime)."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                         capture_output=True, text=True, timeout=120, check=True)
    rows = (line.split("|")[-1] for line in run.stderr.splitlines() if "|" in line)
    return {name.strip().split(".")[0] for name in rows}


def test_building_every_parser_imports_no_torch():
    """`e2edge --help` (and `e2edge serve` on a box without torch) must not wait for it."""
    imported = _modules_imported_by("from e2edge.cli import build_parser; build_parser()")
    assert "e2edge" in imported and "exporter" in imported
    assert not imported & {"torch", "transformers"}


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
