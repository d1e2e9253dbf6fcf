"""`make demo`: build the demo models if they are not built yet, then serve them.

Each step is the `e2edge` command a user would type, run as a subprocess, so the
demo shows the real workflow: train -> export -> serve -> generate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from runtime.errors import PackageError
from runtime.package import load_package

E2EDGE = [sys.executable, "-m", "e2edge.cli"]
PROMPT = "ROMEO:"


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


def generate_in_process(package: Path) -> None:
    from runtime.llm.engine import LLMEngine
    from runtime.llm.sampling import SamplingParams

    print(f"\n== generate from {package.name} with the runtime (onnxruntime, CPU)")
    engine = LLMEngine.load(package)
    params = SamplingParams(max_new_tokens=120, temperature=0.8, top_k=40, top_p=0.95, seed=1)
    print(PROMPT, end="", flush=True)
    for event in engine.generate(PROMPT, params):
        print(event.text, end="", flush=True)
        if event.stats:
            s = event.stats
            print(f"\n[{s.completion_tokens} tokens, first after {s.time_to_first_token_s * 1e3:.0f}"
                  f" ms, {s.decode_tokens_per_s:.0f} tok/s, finish: {event.finish_reason}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    args = parser.parse_args()
    if not os.environ.get("E2EDGE_DATA_DIR") and not shutil.which("e2edge"):
        print("note: E2EDGE_DATA_DIR is not set; data files are downloaded when missing")
    args.artifacts.mkdir(parents=True, exist_ok=True)
    llm_package = build_llm(args.artifacts.resolve(), "llama")
    generate_in_process(llm_package)
    return 0


if __name__ == "__main__":
    sys.exit(main())
