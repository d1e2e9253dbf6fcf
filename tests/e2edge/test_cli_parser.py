"""Building the `e2edge` parser must not need the gRPC client's extras: a training box
runs `e2edge train ...` even where grpc_health (the daemon's health-check stubs) is absent."""

from __future__ import annotations

import subprocess
import sys

BLOCK_AND_PARSE = (
    "import sys; sys.modules['grpc_health'] = None\n"  # `import grpc_health` now fails
    "from e2edge.cli import build_parser\n"
    "args = build_parser().parse_args(['generate', '--model', 'm', 'hi'])\n"
    "print(args.target)\n"
    "from e2edge.cli import main\n"
    "sys.exit(main(['train', 'vit', '--help']))\n"
)


def test_every_command_parses_without_the_grpc_health_stubs():
    run = subprocess.run([sys.executable, "-c", BLOCK_AND_PARSE], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "127.0.0.1:50051"  # the daemon's default listen address
    assert any(line.startswith("usage: e2edge train vit") for line in lines)


def test_the_client_default_target_is_the_daemon_default_listen_address():
    from runtime.cli.connection import DEFAULT_TARGET
    from runtime.client import DEFAULT_TARGET as CLIENT_DEFAULT
    from runtime.config import DEFAULT_LISTEN

    assert DEFAULT_TARGET == CLIENT_DEFAULT == DEFAULT_LISTEN


def test_one_command_builds_only_its_own_parser():
    """`e2edge bench kernels` runs on a GPU box's own Python (torch, cuda-python, numpy):
    naming a command imports its module alone, not grpc or yaml for the others."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "e2edge.cli", "bench",
                             "kernels", "--help"], capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert "usage: e2edge bench kernels" in result.stdout
    assert not {"grpc", "yaml", "torch"} & imported
    assert "e2edge.bench.kernel_cases" in imported  # its own module and what it needs
