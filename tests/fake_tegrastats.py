"""A stand-in for JetPack's `tegrastats`: replays recorded lines at the given interval.

Installed by `install()` as an executable named `tegrastats` first on PATH. It reads:
  FAKE_TEGRASTATS_LINES       file of recorded lines, replayed in a loop
  FAKE_TEGRASTATS_EXIT_AFTER  exit with code 3 after this many lines (to test restarts)
  FAKE_TEGRASTATS_STARTS      file to which each start appends its --interval value
It needs nothing but the standard library, like the tool it stands in for.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "runtime" / "data" / "tegrastats"


def main(argv: list[str]) -> int:
    interval_ms = 1000
    if "--interval" in argv:
        interval_ms = int(argv[argv.index("--interval") + 1])
    starts = os.environ.get("FAKE_TEGRASTATS_STARTS")
    if starts:
        with open(starts, "a") as f:
            f.write(f"{interval_ms}\n")
    lines = [
        line for line in Path(os.environ["FAKE_TEGRASTATS_LINES"]).read_text().splitlines() if line
    ]
    exit_after = int(os.environ.get("FAKE_TEGRASTATS_EXIT_AFTER", "0"))
    printed = 0
    while True:
        for line in lines:
            print(line, flush=True)
            printed += 1
            if exit_after and printed >= exit_after:
                return 3
            time.sleep(interval_ms / 1000.0)


def install(bin_dir: Path, monkeypatch, lines: str | Path, exit_after: int = 0) -> Path:
    """Put a `tegrastats` replaying `lines` (a fixture name or a path) first on PATH.

    Returns the file where each start of the fake records its --interval.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "tegrastats"
    script.write_text(f"#!{sys.executable}\n" + Path(__file__).read_text())
    script.chmod(0o755)
    path = Path(lines)
    if not path.is_file():
        path = DATA / f"{lines}.txt"
    starts = bin_dir / "starts.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TEGRASTATS_LINES", str(path))
    monkeypatch.setenv("FAKE_TEGRASTATS_STARTS", str(starts))
    if exit_after:
        monkeypatch.setenv("FAKE_TEGRASTATS_EXIT_AFTER", str(exit_after))
    else:
        monkeypatch.delenv("FAKE_TEGRASTATS_EXIT_AFTER", raising=False)
    return starts


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
