"""List the models of a running daemon: state, kind, backend, size, slots.

    e2edge models --target 127.0.0.1:50051 [--json]

A model that failed to load is listed with the reason on the line below it.
The last line names the daemon's power source (`none`: responses carry no energy).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from runtime.cli import connection

    connection.add_arguments(parser)  # --target, --tls-ca, --tls-cert, --tls-key, --token
    parser.add_argument("--json", action="store_true",
                        help="print the full ModelInfo messages as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from google.protobuf import json_format

    from runtime import client_security
    from runtime.client import EdgeClient

    security = client_security.from_args(args)
    with EdgeClient(args.target, security=security) as client:
        models = client.list_models()
    if args.json:
        print(json.dumps([json_format.MessageToDict(m, preserving_proto_field_name=True)
                          for m in models], indent=2))
    else:
        print(format_table(models))
    return 0


def _enum_word(enum, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def format_table(models) -> str:
    from runtime.proto.e2edge.v1 import runtime_pb2 as pb

    header = ("NAME", "STATE", "KIND", "BACKEND", "PROVIDERS", "PARAMS", "MB", "CONTEXT",
              "ACTIVE/SLOTS", "QUEUED/MAX")
    rows, notes = [header], {}
    for m in models:
        rows.append((
            m.name,
            _enum_word(pb.ModelState, m.state, "MODEL_STATE_"),
            _enum_word(pb.ModelKind, m.kind, "MODEL_KIND_"),
            m.backend,
            ",".join(p.removesuffix("ExecutionProvider") for p in m.execution_providers) or "-",
            f"{m.parameters:,}" if m.parameters else "-",
            f"{m.bytes / 1e6:.1f}" if m.bytes else "-",
            str(m.context_length or "-"),
            f"{m.active_requests}/{m.max_concurrent}",
            f"{m.queued_requests}/{m.max_queue}",
        ))
        if m.error:
            notes[len(rows) - 1] = f"  error: {m.error}"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i in notes:
            lines.append(notes[i])
    if models and models[0].power_source:  # the daemon's, the same for every model
        lines.append(f"power source: {models[0].power_source}")
    return "\n".join(lines)
