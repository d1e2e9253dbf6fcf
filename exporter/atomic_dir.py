"""Write a directory atomically: fill a temporary one beside the target, then swap it in.

Packages and checkpoints are directories of several files; a killed or failed write
must never leave half of one at the destination, and a previous one there must stay
usable until the new one is complete. The temporary directory is a sibling of the
target (same filesystem, so the final rename is atomic), named `.NAME.tmp-...`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import TypeVar

_Self = TypeVar("_Self", bound="AtomicDirectory")


class AtomicDirectory:
    """Context manager: write files under `.dir`, then `commit()` swaps it in at `out`.

    with AtomicDirectory(out) as target:
        (target.dir / "config.json").write_text(...)
        target.commit()

    Leaving the block without commit (or by an exception) removes the temporary
    directory and leaves whatever is at `out` untouched.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out).expanduser().resolve()
        self.dir: Path = Path()
        self._committed = False

    def __enter__(self: _Self) -> _Self:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.dir = _sibling(self.out, "tmp")
        self.dir.mkdir()  # an ordinary directory (the umask's mode), unlike mkdtemp's 0700
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._committed:
            shutil.rmtree(self.dir, ignore_errors=True)

    def commit(self) -> Path:
        """Move the finished directory into place; return its path."""
        replace_directory(self.dir, self.out)
        self._committed = True
        return self.out


def replace_directory(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` is replaced, and put back if that fails."""
    if not out.exists():
        os.replace(new, out)
        return
    # os.replace cannot swap non-empty directories: move the old one aside first.
    backup = _sibling(out, "old")
    os.replace(out, backup)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _sibling(out: Path, tag: str) -> Path:
    """A fresh hidden name beside `out`: `.NAME.TAG-PID-RANDOM`."""
    return out.parent / f".{out.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}"
