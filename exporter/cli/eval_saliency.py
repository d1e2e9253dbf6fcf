"""Check MAGRIP's saliency scorers against brute force on a checkpoint (prints JSON).

For a random subset of neurons in a few layers, each neuron is removed alone and the
calibration loss measured again; every scorer's ranking of those neurons is compared
with |loss change| by Spearman rank correlation. This is how the default sensitivity
form (taylor) was chosen. The text is a path, a data-file name, or a slice FILE@A:B.
"""

from __future__ import annotations

import argparse


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--calib", required=True, help="text (path, name, or FILE@A:B)")
    parser.add_argument("--layers", type=_layers,
                        help="comma-separated (default: first, middle, last)")
    parser.add_argument("--neurons", type=int, default=96, help="neurons checked per layer")
    parser.add_argument("--windows", type=int, default=8, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=256, help="calibration window tokens")
    parser.add_argument("--out", help="JSON file for the result")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from exporter.magrip.brute_force import check_checkpoint

    result = check_checkpoint(args.model, args.calib, args.layers, args.neurons, args.windows,
                              args.seq_len)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0
