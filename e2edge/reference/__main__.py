"""`python -m e2edge.reference [--check]`: write the reference pages, or check them."""

from __future__ import annotations

import argparse
import sys

from e2edge.reference import REFERENCE_DIR, REPO_ROOT, stale_pages, write_pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2edge.reference",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 listing the pages that are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_pages(REFERENCE_DIR)
        for path in stale:
            print(f"stale: {path.relative_to(REPO_ROOT)} (run `make docs`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_pages(REFERENCE_DIR):
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
