"""The operator's path as docs/deploy-jetson.md writes it: install.sh, packages into the
models directory it made, the daemon started as the unit starts it, `e2edge models`.

Everything here is the installed files themselves: the config install.sh put in
/etc/e2edge (its paths moved under the test's folder, since /run and /var/lib are the
host's), and the unit's own ExecStart line. The one thing redirected is where the
client looks for the service's socket (runtime.config.SYSTEMD_SOCKET, as
runtime/cli/connection.py reads it): the command runs with neither --target nor
E2EDGE_TARGET.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.cli import connection
from runtime.config import SYSTEMD_SOCKET

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"

pytestmark = pytest.mark.timeout(180)


def _unit_exec_start(unit: Path) -> list[str]:
    (line,) = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_install_sh_makes_the_models_directory_the_config_points_at(tmp_path):
    root = tmp_path / "root"
    subprocess.run(["sh", str(INSTALL), "--root", str(root), "--bin", "/opt/e2edge/bin/e2edge",
                    "--no-enable"], check=True, capture_output=True, timeout=60)
    models = root / "var" / "lib" / "e2edge" / "models"
    assert models.is_dir()
    assert stat.S_IMODE(models.stat().st_mode) == 0o750
    config = (root / "etc" / "e2edge" / "e2edge.yaml").read_text()
    assert "path: /var/lib/e2edge/models/" in config
    if os.geteuid() == 0:  # install.sh chowns only as root
        passwd = (root / "etc" / "passwd").read_text().splitlines()
        (uid,) = [int(line.split(":")[2]) for line in passwd if line.startswith("e2edge:")]
        assert models.stat().st_uid == uid


def test_after_install_sh_e2edge_models_finds_the_service(tmp_path, monkeypatch, capsys,
                                                          tmp_path_factory, tiny_llama_package):
    from vision_package import tiny_vision_package

    from e2edge.cli import main
    from runtime.client import EdgeClient

    root = tmp_path / "root"
    shim = tmp_path / "bin" / "e2edge"  # the console script, for this checkout
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m e2edge.cli "$@"\n')
    shim.chmod(0o755)
    subprocess.run(["sh", str(INSTALL), "--root", str(root), "--bin", str(shim), "--no-enable"],
                   check=True, capture_output=True, timeout=60)

    # The operator copies the packages where the installed config expects them.
    models = root / "var" / "lib" / "e2edge" / "models"
    shutil.copytree(tiny_llama_package, models / "demo-llm")
    shutil.copytree(tiny_vision_package(tmp_path_factory), models / "retina-vit")
    # What systemd would provide: /run/e2edge, /var/log/e2edge, under the test's folder.
    run = tmp_path / "run"
    (run / "e2edge").mkdir(parents=True)
    (root / "var" / "log" / "e2edge").mkdir(parents=True)
    config = root / "etc" / "e2edge" / "e2edge.yaml"
    config.write_text(config.read_text()
                      .replace("/run/e2edge/", f"{run}/e2edge/")
                      .replace("/var/lib/e2edge/", f"{root}/var/lib/e2edge/")
                      .replace("/var/log/e2edge/", f"{root}/var/log/e2edge/"))
    socket = run / SYSTEMD_SOCKET.removeprefix("/run/")

    command = _unit_exec_start(root / "etc" / "systemd" / "system" / "e2edge.service")
    assert command[0] == str(shim) and command[1:] == [
        "serve", "--config", "/etc/e2edge/e2edge.yaml"]
    command[-1] = str(config)
    env = {k: v for k, v in os.environ.items() if k != connection.TARGET_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = tmp_path / "daemon.log"
    with open(log, "w") as out:
        daemon = subprocess.Popen(command, cwd=root / "var" / "lib" / "e2edge", env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        with EdgeClient(f"unix:{socket}") as client:
            client.wait_loaded(timeout_s=120)

        monkeypatch.setattr(connection, "SYSTEMD_SOCKET", str(socket))
        monkeypatch.delenv(connection.TARGET_ENV, raising=False)
        assert main(["models"]) == 0, log.read_text()
        rows = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert [row[:3] for row in rows[1:3]] == [["demo", "ready", "llm"],
                                                  ["scans", "ready", "vision"]], rows
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
