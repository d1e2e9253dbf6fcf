"""What a user on the box gets without flags: the client finds the local daemon, the
wheel ships the API's .proto files, and the installer's help names every option."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from runtime.cli import connection
from runtime.config import DEFAULT_LISTEN, SYSTEMD_SOCKET

REPO = Path(__file__).resolve().parents[2]


def test_the_client_target_is_the_env_then_the_service_socket_then_the_default(
        tmp_path, monkeypatch):
    socket = tmp_path / "e2edge.sock"
    monkeypatch.setattr(connection, "SYSTEMD_SOCKET", str(socket))
    monkeypatch.delenv(connection.TARGET_ENV, raising=False)
    assert connection.local_target() == DEFAULT_LISTEN
    socket.touch()
    assert connection.local_target() == f"unix:{socket}"
    monkeypatch.setenv(connection.TARGET_ENV, "10.0.0.5:50051")
    assert connection.local_target() == "10.0.0.5:50051"


def test_a_python_client_without_a_target_looks_where_the_commands_look(tmp_path, monkeypatch):
    from runtime.client import EdgeClient

    monkeypatch.setattr(connection, "SYSTEMD_SOCKET", str(tmp_path / "absent.sock"))
    monkeypatch.delenv(connection.TARGET_ENV, raising=False)
    with EdgeClient() as client:
        assert client.target == DEFAULT_LISTEN
    monkeypatch.setenv(connection.TARGET_ENV, "unix:/tmp/elsewhere.sock")
    with EdgeClient() as client:
        assert client.target == "unix:/tmp/elsewhere.sock"
    with EdgeClient("10.0.0.5:50051") as client:  # an explicit target wins
        assert client.target == "10.0.0.5:50051"


def test_the_models_command_uses_it_and_says_so_in_its_help(monkeypatch):
    from e2edge.cli import build_parser

    monkeypatch.setenv(connection.TARGET_ENV, "unix:/tmp/elsewhere.sock")
    parser = build_parser(only="models")
    assert parser.parse_args(["models"]).target == "unix:/tmp/elsewhere.sock"
    help_text = " ".join(subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "models", "--help"], capture_output=True,
        text=True, check=True).stdout.split())
    assert "$E2EDGE_TARGET" in help_text and SYSTEMD_SOCKET in help_text


def test_the_service_listens_where_the_clients_look():
    config = yaml.safe_load((REPO / "systemd" / "e2edge.yaml").read_text())
    assert config["listen"] == f"unix:{SYSTEMD_SOCKET}"
    unit = (REPO / "systemd" / "e2edge.service").read_text()
    assert f"RuntimeDirectory={Path(SYSTEMD_SOCKET).parent.name}" in unit
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for socket in re.findall(r"unix:(/run/[\w./-]+\.sock)", doc.read_text()):
            assert socket == SYSTEMD_SOCKET, f"{doc.name} names the socket {socket}"


def test_the_wheel_ships_the_proto_files_and_e2edge_proto_writes_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel")],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("e2edge-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".proto")}
    assert shipped == {"runtime/proto/e2edge/v1/runtime.proto",
                       "runtime/proto/kserve/grpc_service.proto"}
    out = tmp_path / "protos"
    subprocess.run([sys.executable, "-m", "e2edge.cli", "proto", "--out", str(out)],
                   check=True, capture_output=True)
    for name in ("e2edge/v1/runtime.proto", "kserve/grpc_service.proto"):
        assert (out / name).read_bytes() == (REPO / "proto" / name).read_bytes()


def test_install_sh_help_names_every_option_it_takes():
    script = (REPO / "systemd" / "install.sh").read_text()
    taken = set(re.findall(r"^\s+(--[a-z-]+)\)", script, re.MULTILINE))
    help_text = subprocess.run(["sh", str(REPO / "systemd" / "install.sh"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert taken and all(option in help_text for option in taken), taken
