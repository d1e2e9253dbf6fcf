"""Classify image files with a vision model of a running daemon: one line per file.

    e2edge classify --target 127.0.0.1:50051 --model retina [--top-k 3] scan1.png scan2.dcm

Files are PNG, JPEG or DICOM (detected from their bytes; --format names it), or .npy
arrays sent as raw tensors (uint8 0-255 or float32 0-1, HxW or HxWxC). Each file is
its own request on one ClassifyStream, so the daemon can batch them and a bad file
fails alone. A line is `FILE: LABEL (PROBABILITY) ... in LATENCY ms`, the latency
being the daemon's (decode + queue + inference), plus the energy when the daemon
measures it; a file that fails is one line on stderr, and the exit status is 1.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from runtime.cli import connection

    parser.add_argument("files", nargs="+", metavar="FILE", help="PNG, JPEG, DICOM or .npy")
    connection.add_arguments(parser)  # --target, --tls-ca, --tls-cert, --tls-key, --token
    parser.add_argument("--model", required=True, help="vision model name (see `e2edge models`)")
    parser.add_argument("--top-k", type=int, default=1, help="labels per file (default 1)")
    parser.add_argument("--format", choices=("png", "jpeg", "dicom"),
                        help="the files' format (default: detected from each file's bytes)")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="deadline in seconds for all the files together (default: none)")


def run(args: argparse.Namespace) -> int:
    import sys

    from runtime import client_security
    from runtime.client import EdgeClient
    from runtime.proto.e2edge.v1 import runtime_pb2 as pb

    if args.top_k < 1:
        raise ValueError("--top-k must be >= 1")
    loaded = [(path, *_load(path, args.format)) for path in args.files]  # (path, image, error)
    requests = [pb.ClassifyRequest(model=args.model, images=[image], top_k=args.top_k)
                for _, image, _ in loaded if image is not None]
    with EdgeClient(args.target, security=client_security.from_args(args)) as client:
        answers = iter(client.classify_stream(iter(requests), timeout_s=args.timeout))
        failed = 0
        for path, image, error in loaded:
            if image is not None:
                answer = next(answers)
                if answer.HasField("error"):
                    error = f"{answer.error.code}: {answer.error.message}"
                else:
                    print(f"{path}: {format_answer(answer)}", flush=True)
            if error is not None:
                failed += 1
                print(f"e2edge classify: {path}: {error}", file=sys.stderr, flush=True)
    return 1 if failed else 0


def _load(path: str, fmt: str | None):
    """(Image message, None) or (None, the reason it cannot be sent)."""
    import numpy as np

    from runtime.server.edge.convert import encoded_image, tensor_message

    try:
        if path.endswith(".npy") and fmt is None:
            return tensor_message(np.load(path, allow_pickle=False)), None
        with open(path, "rb") as f:
            return encoded_image(f.read(), fmt), None
    except (OSError, ValueError) as e:
        return None, " ".join(str(e).split())


def format_answer(answer) -> str:
    """`3 (0.912), 0 (0.051) in 12.3 ms` (+ energy when the daemon measured it)."""
    (result,) = answer.results
    labels = ", ".join(f"{t.label} ({t.probability:.3f})" for t in result.top)
    s = answer.stats
    line = f"{labels} in {s.total_s * 1e3:.1f} ms"
    if s.energy.HasField("joules"):
        line += f", {s.energy.joules * 1e3:.2f} mJ ({s.energy.power_source})"
    return line
