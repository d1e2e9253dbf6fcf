"""`make demo`: build the demo models if they are not built yet, then serve them.

Each step is the `e2edge` command a user would type, run as a subprocess, so the
demo shows the real workflow: train -> export -> serve -> generate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from runtime.errors import PackageError
from runtime.package import load_package

E2EDGE = [sys.executable, "-m", "e2edge.cli"]
PROMPT = "ROMEO:"
CONFIG = "demo-daemon.yaml"  # under --artifacts, kept: the daemon's config
SOCKET = "demo.sock"  # under --artifacts: where that daemon listens


def step(title: str, args: list[str]) -> None:
    print(f"\n== {title}\n$ e2edge {' '.join(args)}", flush=True)
    subprocess.run([*E2EDGE, *args], check=True)


def package_is_valid(path: Path) -> bool:
    try:
        load_package(path)
    except PackageError:
        return False
    return True


def build_llm(artifacts: Path, arch: str) -> Path:
    checkpoint = artifacts / f"demo-{arch}"
    package = artifacts / f"demo-{arch}-pkg"
    if not (checkpoint / "model.safetensors").is_file():
        step(f"train the {arch} demo model (about 5-10 minutes on 2 cores)", [
            "train", "lm", "--corpus", "tinyshakespeare.txt", "--arch", arch,
            "--preset", "demo", "--out", str(checkpoint),
        ])
    if not package_is_valid(package):
        step(f"export the {arch} demo model", [
            "export", "llm", "--model", str(checkpoint), "--out", str(package),
            "--name", f"demo-{arch}",
        ])
    return package


def build_vit(artifacts: Path) -> Path:
    """The 28 px ternary BitMed ViT on RetinaMNIST: teacher, distilled student, package."""
    teacher, student, package = (
        artifacts / name for name in ("demo-vit-teacher", "demo-vit-student", "demo-vit-pkg")
    )
    data = ["--preset", "mnist28", "--data", "retinamnist.npz", "--time-budget-s", "150"]
    if not (teacher / "model.safetensors").is_file():
        step("train the 28 px ViT teacher (bounded to 150 s)",
             ["train", "vit", "--role", "teacher", *data, "--out", str(teacher)])
    if not (student / "model.safetensors").is_file():
        step("distil the ternary BitMed ViT student (bounded to 150 s)",
             ["train", "vit", "--role", "student", *data, "--teacher", str(teacher),
              "--out", str(student)])
    if not package_is_valid(package):
        step("export the ternary ViT (2-bit MatMulNBits)",
             ["export", "vit", "--model", str(student), "--out", str(package),
              "--name", "demo-vit"])
    return package


def write_test_images(artifacts: Path, count: int = 4) -> list[Path]:
    """A few RetinaMNIST test images as PNG files, their true label in the name."""
    import numpy as np
    from PIL import Image

    from e2edge.data import resolve_data_file

    data = np.load(resolve_data_file("retinamnist.npz"))
    paths = []
    for i in range(count):
        label = int(np.asarray(data["test_labels"][i]).reshape(-1)[0])
        path = artifacts / f"retina-test-{i}-label{label}.png"
        Image.fromarray(data["test_images"][i]).save(path)
        paths.append(path)
    return paths


def write_daemon_config(artifacts: Path, models: dict[str, Path]) -> Path:
    """ARTIFACTS/demo-daemon.yaml: the models on the unix socket ARTIFACTS/demo.sock.

    It stays after the demo, so `e2edge serve --config artifacts/demo-daemon.yaml`
    serves the same models again (docs/quickstart.md)."""
    lines = [f"listen: unix:{artifacts / SOCKET}", "grace_period_s: 5", "models:"]
    for name, path in models.items():
        # vision: dynamic batching; LLM: 4 streams share each decode step
        batching = (", batching: {max_batch: 16, max_delay_ms: 2}" if "vit" in name
                    else ", max_concurrent: 4, max_sequence_length: 512")
        lines.append(f"  - {{name: {name}, path: {path}{batching}}}")
    config = artifacts / CONFIG
    config.write_text("\n".join(lines) + "\n")
    return config


def serve_and_generate(artifacts: Path, models: dict[str, Path]) -> None:
    """Start `e2edge serve` on a unix socket, stream an answer, classify a few images."""
    from runtime.client import EdgeClient

    config = write_daemon_config(artifacts, models)
    target = f"unix:{artifacts / SOCKET}"
    print(f"\n== start the daemon\n$ e2edge serve --config {config}", flush=True)
    daemon = subprocess.Popen([*E2EDGE, "serve", "--config", str(config)])
    try:
        with EdgeClient(target) as client:
            client.wait_loaded(timeout_s=120)
        step("list the models it serves", ["models", "--target", target])
        step("stream an answer through the gRPC client", [
            "generate", "--target", target, "--model", "demo-llama", "--max-new-tokens", "120",
            "--temperature", "0.8", "--top-k", "40", "--top-p", "0.95", "--seed", "1", PROMPT,
        ])
        if "demo-vit" in models:
            step("classify RetinaMNIST test images", [
                "classify", "--target", target, "--model", "demo-vit", "--top-k", "2",
                *map(str, write_test_images(artifacts)),
            ])
    finally:
        print("\n== stop the daemon (SIGTERM: drain, then exit 0)", flush=True)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        print(f"daemon exited with status {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args()
    if not os.environ.get("E2EDGE_DATA_DIR") and not shutil.which("e2edge"):
        print("note: E2EDGE_DATA_DIR is not set; data files are downloaded when missing")
    args.artifacts.mkdir(parents=True, exist_ok=True)
    artifacts = args.artifacts.resolve()
    llm_package = build_llm(artifacts, "llama")
    vit_package = build_vit(artifacts)
    serve_and_generate(artifacts, {"demo-llama": llm_package, "demo-vit": vit_package})
    where = os.path.relpath(artifacts)
    print(f"\n== the models and the daemon's config stay in {where}/; serve them again with\n"
          f"$ {e2edge_command()} serve --config {where}/{CONFIG}\n"
          f"and point the clients at it: export E2EDGE_TARGET=unix:{where}/{SOCKET}")
    return 0


def e2edge_command() -> str:
    """How to run `e2edge` from here: this venv's console script, else this Python."""
    script = Path(sys.executable).parent / "e2edge"
    if script.is_file():
        return os.path.relpath(script)
    return f"{os.path.relpath(sys.executable)} -m e2edge.cli"


if __name__ == "__main__":
    sys.exit(main())
