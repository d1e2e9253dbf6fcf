"""Options of the commands that talk to a running daemon (`generate`, `models`, `classify`).

Building them imports neither the gRPC client nor its health-check stubs, so every
`e2edge` command, training ones included, parses its arguments where only its own
dependencies are installed.
"""

from __future__ import annotations

import argparse
import os

from runtime.config import DEFAULT_LISTEN as DEFAULT_TARGET  # the daemon's default address
from runtime.config import SYSTEMD_SOCKET

TARGET_ENV = "E2EDGE_TARGET"


def local_target() -> str:
    """The daemon a client on this box talks to unless told: $E2EDGE_TARGET, else the
    systemd service's socket when it exists, else the daemon's default address."""
    if os.environ.get(TARGET_ENV):
        return os.environ[TARGET_ENV]
    if os.path.exists(SYSTEMD_SOCKET):
        return f"unix:{SYSTEMD_SOCKET}"
    return DEFAULT_TARGET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--target and the security options (--tls-*, --token)."""
    from runtime import client_security

    parser.add_argument("--target", default=local_target(),
                        help=f"daemon address, host:port or unix:/path (default: "
                             f"${TARGET_ENV}, else unix:{SYSTEMD_SOCKET} when that socket "
                             f"exists, else {DEFAULT_TARGET})")
    client_security.add_arguments(parser)
