"""Write the daemon's gRPC API (.proto files, as this install ships them) into a folder.

    e2edge proto --out DIR

For clients in other languages: C++ and ROS 2 nodes generate their stubs from these
(protoc --cpp_out / --grpc_out), exactly the files the daemon's Python stubs came from:
e2edge/v1/runtime.proto (EdgeRuntime) and kserve/grpc_service.proto (KServe v2).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the .proto files into")


def shipped_protos() -> dict[str, bytes]:
    """Path under the proto root -> bytes, from the installed runtime.proto package."""
    from importlib import resources

    root = resources.files("runtime.proto")
    found: dict[str, bytes] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".proto"):
                found[prefix + entry.name] = entry.read_bytes()

    walk(root, "")
    if not found:
        raise FileNotFoundError("this install ships no .proto files (runtime/proto)")
    return found


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.out)
    for name, data in sorted(shipped_protos().items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(path)
    return 0
