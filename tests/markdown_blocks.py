"""Fenced code blocks of the Markdown docs, for the tests that run or parse them.

A block is runnable when the line just above its opening fence is the HTML comment
``<!-- runnable -->`` (invisible when rendered); the doc tests execute those blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNNABLE_MARK = "<!-- runnable -->"
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: where it is, its info string's language, its text."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced code block of one Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence = opening["fence"]
        language = opening["info"].strip().split(" ")[0] if opening["info"].strip() else ""
        runnable = i > 0 and lines[i - 1].strip() == RUNNABLE_MARK
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = lines[j].strip()
            if closing.startswith(fence[0] * len(fence)) and closing.strip(fence[0]) == "":
                break
            body.append(lines[j])
            j += 1
        blocks.append(CodeBlock(path, i + 1, language, "\n".join(body) + "\n", runnable))
        i = j + 1
    return blocks


def prose(path: Path) -> str:
    """The file's text with its fenced blocks blanked out, fences included, so that line
    numbers stay those of the file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for block in code_blocks(path):
        last = block.line + block.text.count("\n")  # the closing fence, 1-based
        for index in range(block.line - 1, min(last, len(lines))):
            lines[index] = ""
    return "\n".join(lines)


def doc_files() -> list[Path]:
    """The README and every Markdown page under docs/ (results records included)."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def shell_commands(block: CodeBlock) -> list[str]:
    """The block's command lines, continuation lines joined and comments dropped."""
    commands: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        stripped = line.strip()
        if stripped.startswith("$ "):
            stripped = stripped[2:]
        if stripped and not stripped.startswith("#"):
            commands.append(stripped)
    return commands
