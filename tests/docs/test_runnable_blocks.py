"""The runnable blocks of docs/quickstart.md and docs/clients.md, run against a real daemon.

A block is runnable when `<!-- runnable -->` is the line above its fence
(tests/markdown_blocks.py). The pages' examples call the models `make demo` serves
(demo-llama, demo-vit) and a chat model (chat), so the test serves its own tiny packages
under those names: `e2edge serve` in a child process, with the config e2edge/demo.py
writes (the one `make demo` leaves in artifacts/) plus the chat model, and a `tegrastats`
that replays recorded Jetson lines as its power source. Each block runs in a scratch
folder laid out as `make demo` leaves the clone (artifacts/demo.sock,
artifacts/retina-test-*.png), with E2EDGE_TARGET set and `e2edge` on PATH: sh and bash
blocks by `bash -e`, Python blocks by this interpreter. A block must exit 0, and where
the page promises output, that output must be there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_blocks import REPO_ROOT, CodeBlock, code_blocks, shell_commands

pytestmark = pytest.mark.timeout(600)

PAGES = [REPO_ROOT / "docs" / "quickstart.md", REPO_ROOT / "docs" / "clients.md"]
LANGUAGES = {"sh": "bash", "bash": "bash", "python": "python"}
# A fragment of a runnable block -> what its output (stdout and stderr) must hold.
PROMISED = {
    "e2edge models": ["demo-llama", "demo-vit", "ready", "power source: tegrastats"],
    "e2edge generate --model demo-llama": ["generated tokens", "tok/s"],
    "e2edge classify --model demo-vit": ["retina-test-0-label", " ms"],
    "e2edge chat --model chat --stats": ["[eos]"],
    'client.generate("demo-llama", "ROMEO:", max_new_tokens=60': ["tokens, first after"],
    "client.health()": ["daemon: SERVING", "demo-llama MODEL_STATE_READY MODEL_KIND_LLM"],
    'client.chat("chat"': ["('assistant', "],
    "top_p=2.0": ["INVALID_ARGUMENT top_p top_p: must be in (0, 1], got 2.0"],
    "stream.cancel()": ["CANCELLED after 10 pieces"],
    'client.classify("demo-vit"': ["retina-test-3-label", "frame [(", "5 images: decode"],
    "client.watch_power(": ["tegrastats: ", "mJ/token"],
    "stub.Generate(": ["raw-1: "],
    "e2edge proto --out protos": ["protos/e2edge/v1/runtime.proto"],
    "tritonclient": ["ready: True True"],
}
CHAT = [{"role": "user", "content": "Hello there"}]


def _runnable(page: Path) -> list[CodeBlock]:
    return [block for block in code_blocks(page) if block.runnable]


RUNNABLE = [block for page in PAGES for block in _runnable(page)]


@dataclass
class Scratch:
    """Where the blocks run: a folder laid out as `make demo` leaves a clone."""

    cwd: Path
    env: dict[str, str]


def _shim(path: Path, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(0o755)


def _client_env(bin_dir: Path) -> dict[str, str]:
    """This Python's environment with `e2edge` (this checkout's) first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("E2EDGE_TARGET", "E2EDGE_TOKEN")}
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                      env.get("PYTHONPATH")]))
    return env


def _demo_images(artifacts: Path) -> None:
    """Four RGB 28 px PNGs named as e2edge/demo.py names the RetinaMNIST test images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        pixels = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(artifacts / f"retina-test-{i}-label{i % 4}.png")


def _llm_package(checkpoint: Path, out: Path, name: str) -> Path:
    from exporter.llm.export import LLMExportOptions, export_llm

    return export_llm(checkpoint, out, LLMExportOptions(name=name)).package


def _serve(config: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(config.with_suffix(".log"), "w")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(["e2edge", "serve", "--config", str(config)], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _stop(daemon: subprocess.Popen) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(30)
    finally:
        if daemon.poll() is None:
            daemon.kill()


def _wait_loaded(target: str, daemon: subprocess.Popen, log: Path) -> None:
    from runtime.client import EdgeClient
    from runtime.proto.e2edge.v1 import runtime_pb2 as pb

    with EdgeClient(target) as client:
        try:
            models = client.wait_loaded(timeout_s=120)
        except Exception as e:
            raise AssertionError(f"the daemon never loaded ({e}):\n{log.read_text()}") from e
    failed = [m.name for m in models if m.state != pb.MODEL_STATE_READY]
    assert not failed and daemon.poll() is None, log.read_text()


@pytest.fixture(scope="module")
def packages(tmp_path_factory, tiny_llama_checkpoint) -> dict[str, Path]:
    """The tiny packages, under the names the pages use."""
    from chat_templates import make_chat_checkpoint
    from vision_package import tiny_vision_package

    root = tmp_path_factory.mktemp("doc-packages")
    chat_checkpoint = make_chat_checkpoint(root / "chat-checkpoint", CHAT)
    return {
        "demo-llama": _llm_package(tiny_llama_checkpoint, root / "demo-llama-pkg", "demo-llama"),
        "demo-vit": tiny_vision_package(tmp_path_factory),
        "chat": _llm_package(chat_checkpoint, root / "chat-pkg", "chat"),
    }


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, packages) -> Scratch:
    """The daemon the blocks talk to, serving on artifacts/demo.sock of the scratch folder."""
    import fake_tegrastats

    from e2edge.demo import SOCKET, write_daemon_config

    root = tmp_path_factory.mktemp("docs")  # short: a unix socket path has 107 bytes
    cwd, bin_dir = root / "work", root / "bin"
    artifacts = cwd / "artifacts"
    artifacts.mkdir(parents=True)
    _demo_images(artifacts)
    config = write_daemon_config(artifacts, {name: packages[name]
                                             for name in ("demo-llama", "demo-vit")})
    with config.open("a") as f:
        f.write(f"  - {{name: chat, path: {packages['chat']}}}\n")
    _shim(bin_dir / "e2edge", f"{sys.executable} -m e2edge.cli")
    env = _client_env(bin_dir)
    env["E2EDGE_TARGET"] = f"unix:{artifacts / SOCKET}"
    with pytest.MonkeyPatch.context() as patch:  # the daemon's power source: replayed lines
        fake_tegrastats.install(root / "power-bin", patch, "orin_nano_jp6")
        daemon_env = {**env, "PATH": f"{root / 'power-bin'}{os.pathsep}{env['PATH']}",
                      "FAKE_TEGRASTATS_LINES": os.environ["FAKE_TEGRASTATS_LINES"]}
    daemon = _serve(config, cwd, daemon_env)
    try:
        _wait_loaded(env["E2EDGE_TARGET"], daemon, config.with_suffix(".log"))
        yield Scratch(cwd, env)
    finally:
        _stop(daemon)


def _run_block(block: CodeBlock, cwd: Path, env: dict[str, str],
               timeout_s: float = 120) -> subprocess.CompletedProcess:
    source = cwd / f"block-{block.path.stem}-{block.line}"
    source.write_text(block.text)
    if LANGUAGES[block.language] == "bash":
        command = ["bash", "-e", "-o", "pipefail", str(source)]
    else:
        command = [sys.executable, str(source)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def test_each_page_has_runnable_blocks_in_a_language_the_test_runs():
    for page in PAGES:
        blocks = _runnable(page)
        assert blocks, f"{page.relative_to(REPO_ROOT)} marks no block <!-- runnable -->"
        for block in blocks:
            assert block.language in LANGUAGES, (
                f"{block.where}: runnable blocks are sh, bash or python, not "
                f"{block.language or 'unlabelled'}")


def test_every_promised_output_belongs_to_a_runnable_block():
    for fragment in PROMISED:
        assert any(fragment in block.text for block in RUNNABLE), (
            f"no runnable block contains {fragment!r}: update PROMISED with the pages")


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.where for block in RUNNABLE])
def test_the_block_runs_against_a_daemon(block, scratch):
    result = _run_block(block, scratch.cwd, scratch.env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{block.where} exited {result.returncode}:\n{output}"
    for fragment, expected in PROMISED.items():
        if fragment in block.text:
            for text in expected:
                assert text in output, f"{block.where}: {text!r} not in its output:\n{output}"


def test_the_chat_refusal_the_quickstart_quotes_is_the_daemons(scratch):
    page = (REPO_ROOT / "docs" / "quickstart.md").read_text()
    (quoted,) = re.findall(r"^e2edge chat: error: (.+)$", page, re.MULTILINE)
    result = subprocess.run(["e2edge", "generate", "--model", "demo-llama", "--message",
                             "user=Hello"], cwd=scratch.cwd, env=scratch.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"e2edge generate: error: {quoted}"


def test_a_fresh_clone_reaches_a_streamed_answer_in_four_commands(tmp_path_factory, packages):
    """The clients page's path: `make demo`, the daemon in the background, the user's
    script. `make demo` is stood in for by what it leaves (e2edge/demo.py writes the same
    config over the demo's model names; .venv/bin holds this checkout's commands); the
    other commands run as the page writes them, the script being the page's next
    runnable Python block. Only the daemon's default port is swapped for a free one (and
    E2EDGE_TARGET names it), so that nothing else on this machine can be in the way."""
    from e2edge.bench.load import free_port
    from e2edge.demo import write_daemon_config
    from runtime.config import DEFAULT_LISTEN

    page = REPO_ROOT / "docs" / "clients.md"
    blocks = code_blocks(page)
    (path_block,) = [b for b in blocks if "make demo" in shell_commands(b)]
    commands = shell_commands(path_block)
    assert commands[0] == "make demo" and len(commands) <= 3, (
        "a fresh clone (git clone: the first command) plus these must be at most four")
    (script,) = re.findall(r"python (\S+\.py)$", commands[-1])
    client = next(b for b in blocks if b.line > path_block.line and b.runnable
                  and b.language == "python")

    clone = tmp_path_factory.mktemp("clone")
    (clone / "artifacts").mkdir()
    write_daemon_config(clone / "artifacts", {name: packages[name]
                                              for name in ("demo-llama", "demo-vit")})
    _shim(clone / ".venv" / "bin" / "e2edge", f"{sys.executable} -m e2edge.cli")
    _shim(clone / ".venv" / "bin" / "python", sys.executable)
    (clone / script).write_text(client.text)
    env = _client_env(clone / ".venv" / "bin")
    free = f"127.0.0.1:{free_port()}"
    env["E2EDGE_TARGET"] = free  # where the client looks by default: DEFAULT_LISTEN
    # The background daemon goes when the script is done (as `kill %1` would).
    shell = "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" + "\n".join(
        command.replace(DEFAULT_LISTEN, free) for command in commands[1:]) + "\n"
    result = subprocess.run(["bash", "-e", "-c", shell], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "tokens, first after" in result.stdout, output
