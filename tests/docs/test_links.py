"""Every relative link in the README and docs/ leads somewhere: the file exists and, for a
link to a heading, the heading does (by GitHub's anchor rule), so a renamed page or
section breaks the build instead of the reader's click."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from markdown_blocks import REPO_ROOT, doc_files, prose

from e2edge.reference.markdown import anchor

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


@functools.cache
def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in _HEADING.findall(prose(path)):
        slug = anchor(heading).removeprefix("#")
        counts[slug] = counts.get(slug, -1) + 1
        found.add(f"{slug}-{counts[slug]}" if counts[slug] else slug)
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in _LINK.findall(prose(path)):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check
            continue
        file_part, _, fragment = target.partition("#")
        linked = (path.parent / file_part) if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: {linked.name} has no heading #{fragment}")
    return broken


def test_anchor_follows_githubs_rule():
    assert anchor("Runtime (`runtime/`, no torch)") == "#runtime-runtime-no-torch"
    assert anchor("CUDA kernels: `e2edge bench kernels`") == "#cuda-kernels-e2edge-bench-kernels"


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](missing.md) [bad](#nowhere)\n")
    assert broken_links(page) == ["missing.md: no such file",
                                  "#nowhere: page.md has no heading #nowhere"]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(path):
    assert not broken_links(path), f"{path.relative_to(REPO_ROOT)}: " + "; ".join(
        broken_links(path))
