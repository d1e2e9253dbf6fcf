"""The bits of Markdown the reference pages are written with: headers, tables, anchors.

Text that comes from the code (help strings, field docs, .proto comments) is plain
prose with `backticked` code; `cell` makes it safe inside a table row and `prose`
outside one, escaping only what GitHub would otherwise read as markup.
"""

from __future__ import annotations

import re

_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_MARKUP = re.compile(r"[<*]|(?<!\w)_|_(?!\w)")


def generated_notice(source: str) -> str:
    """The first line of every reference page: what it is made from, and by what."""
    return (f"<!-- Generated from {source} by `make docs` (python -m e2edge.reference); "
            "do not edit by hand. -->")


def _escape_outside_code(text: str, extra: str = "") -> str:
    """Escape `<`, `*` and word-edge `_` (and the `extra` characters) outside code spans."""
    pieces: list[str] = []
    last = 0
    for span in _CODE_SPAN.finditer(text):
        pieces.append(_escape(text[last:span.start()], extra))
        pieces.append(span.group(0))
        last = span.end()
    pieces.append(_escape(text[last:], extra))
    return "".join(pieces)


def _escape(text: str, extra: str) -> str:
    text = _MARKUP.sub(lambda m: "&lt;" if m.group(0) == "<" else "\\" + m.group(0), text)
    for char in extra:
        text = text.replace(char, "\\" + char)
    return text


def prose(text: str) -> str:
    """Paragraphs of source text as Markdown paragraphs (lines joined, blank lines kept)."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(_escape_outside_code(p) for p in paragraphs if p)


def cell(text: str) -> str:
    """Source text as one table cell: one line, `|` escaped (inside code spans too, as
    GitHub tables require)."""
    text = " ".join(text.split())
    return _escape_outside_code(text).replace("|", "\\|")


def code(text: str) -> str:
    """`text` as an inline code span, for a table cell (`|` escaped)."""
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub table; cells must already be escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to `-`."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return "#" + text.replace(" ", "-")


def fenced(text: str, language: str = "text") -> str:
    return f"```{language}\n{text.rstrip()}\n```"
