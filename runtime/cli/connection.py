"""Options of the commands that talk to a running daemon (`generate`, `models`, `classify`).

Building them imports neither the gRPC client nor its health-check stubs, so every
`e2edge` command, training ones included, parses its arguments where only its own
dependencies are installed.
"""

from __future__ import annotations

import argparse

from runtime.config import DEFAULT_LISTEN as DEFAULT_TARGET  # the daemon's default address


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--target and the security options (--tls-*, --token)."""
    from runtime import client_security

    parser.add_argument("--target", default=DEFAULT_TARGET,
                        help=f"daemon address, host:port or unix:/path (default {DEFAULT_TARGET})")
    client_security.add_arguments(parser)
