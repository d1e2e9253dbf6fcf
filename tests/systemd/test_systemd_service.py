"""systemd/: the unit passes systemd-analyze, install.sh installs into a root and undoes it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import load_config

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
INSTALL = SYSTEMD / "install.sh"
E2EDGE_BIN = Path(sys.executable).parent / "e2edge"  # the venv's console script

pytestmark = pytest.mark.timeout(60)

needs_systemctl = pytest.mark.skipif(
    shutil.which("systemctl") is None, reason="systemctl is not installed here"
)


def _install(root: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["sh", str(INSTALL), "--root", str(root), *args],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under root: its mode and content (a link: its target)."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            snapshot[str(path.relative_to(root))] = (info.st_mode, os.readlink(path))
        elif path.is_file():
            if path.name.endswith("-") or path.name == ".pwd.lock":
                continue  # shadow-utils' backup copies and lock file
            snapshot[str(path.relative_to(root))] = (info.st_mode, path.read_bytes())
        else:
            snapshot[str(path.relative_to(root))] = (info.st_mode, "dir")
    return snapshot


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_asks_for_notify_watchdog_restart_and_hardening():
    unit = _unit_settings(SYSTEMD / "e2edge.service")
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "Restart": ["on-failure"],
        "User": ["e2edge"], "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"], "PrivateTmp": ["yes"], "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"], "StateDirectory": ["e2edge"],
        "LogsDirectory": ["e2edge"], "RuntimeDirectory": ["e2edge"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"], "SupplementaryGroups": ["video"],
    }
    for key, value in expected.items():
        assert unit.get(key) == value, key
    assert unit["WatchdogSec"] and unit["ExecStart"][0].endswith(
        "serve --config /etc/e2edge/e2edge.yaml")


def test_example_config_is_valid_and_uses_the_units_directories():
    config = load_config(SYSTEMD / "e2edge.yaml")
    assert config.listen == "unix:/run/e2edge/e2edge.sock"  # RuntimeDirectory
    assert config.power is not None and config.power.log.startswith("/var/log/e2edge/")
    assert all(str(m.path).startswith("/var/lib/e2edge/") for m in config.models)
    # One LLM and one vision model, each on the best backend the box has.
    assert [m.name for m in config.models] == ["demo", "scans"]
    assert {m.backend for m in config.models} == {"auto"}
    assert config.models[1].batching.max_batch == 16


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here (apt-get install systemd)")
@needs_systemctl
def test_installed_unit_passes_systemd_analyze_verify(tmp_path):
    _install(tmp_path / "root", "--bin", str(E2EDGE_BIN))
    unit = tmp_path / "root" / "etc" / "systemd" / "system" / "e2edge.service"
    assert f"ExecStart={E2EDGE_BIN} serve" in unit.read_text()
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify exits 0 on unknown keys or bad values too; it only warns, naming the unit.
    complaints = [line for line in output.splitlines() if "e2edge.service" in line]
    assert complaints == [], output


@needs_systemctl
def test_install_twice_changes_nothing_and_uninstall_undoes_it(tmp_path):
    root = tmp_path / "root"
    _install(root, "--bin", str(E2EDGE_BIN))
    etc = root / "etc"
    assert "e2edge:" in (etc / "passwd").read_text()
    assert (etc / "systemd/system/multi-user.target.wants/e2edge.service").is_symlink()
    config = etc / "e2edge" / "e2edge.yaml"
    assert load_config(config).listen == "unix:/run/e2edge/e2edge.sock"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640

    first = _tree(root)
    second = _install(root, "--bin", str(E2EDGE_BIN))
    assert _tree(root) == first
    assert "kept the existing" in second.stdout and "is up to date" in second.stdout

    config.write_text(config.read_text().replace("level: INFO", "level: DEBUG"))
    _install(root, "--bin", str(E2EDGE_BIN))
    assert "level: DEBUG" in config.read_text(), "a reinstall overwrote the admin's config"

    _install(root, "--uninstall")
    assert not (etc / "systemd/system/e2edge.service").exists()
    assert not (etc / "systemd/system/multi-user.target.wants/e2edge.service").is_symlink()
    assert config.exists() and "e2edge:" in (etc / "passwd").read_text()
    _install(root, "--uninstall")  # again: nothing left to do, still fine


@needs_systemctl
@pytest.mark.skipif(os.geteuid() != 0, reason="userdel needs root, even on an offline root")
def test_uninstall_purge_removes_config_and_user(tmp_path):
    root = tmp_path / "root"
    etc = root / "etc"
    _install(root, "--bin", str(E2EDGE_BIN))
    _install(root, "--uninstall", "--purge")
    assert not (etc / "systemd/system/e2edge.service").exists()
    assert not (etc / "e2edge").exists()
    assert "e2edge:" not in (etc / "passwd").read_text()
    assert "e2edge:" not in (etc / "group").read_text()


def test_dry_run_prints_the_steps_and_touches_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    result = _install(root, "--dry-run", "--bin", "/opt/e2edge/bin/e2edge")
    assert list(root.iterdir()) == []
    assert "+ install -m 0644 " in result.stdout
    assert f"{root}/etc/systemd/system/e2edge.service" in result.stdout
    assert f"{root}/etc/e2edge/e2edge.yaml" in result.stdout


def test_install_refuses_a_relative_binary(tmp_path):
    result = subprocess.run(["sh", str(INSTALL), "--root", str(tmp_path), "--no-enable",
                             "--bin", "bin/e2edge"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "--bin must be an absolute path" in result.stderr
