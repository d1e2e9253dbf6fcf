"""Every `e2edge ...` command line in README.md and docs/**/*.md parses with the real CLI.

Nothing is executed: the words of each command go to e2edge.cli.build_parser(), the
parser `e2edge` itself runs, so a renamed flag, a removed subcommand or a value that is
no longer a choice fails here. Each file is one test that lists all its offenders,
each as FILE:LINE, the command as written, and what the parser said.

Where commands are looked for
- Fenced blocks of language sh, bash, shell, console or none (in console blocks only
  the lines that start with `$ `), line by line with tests/markdown_blocks.py.
- Inline code spans outside fenced blocks, e.g. `e2edge models --json` in prose or a
  table.

The shell around a command. A line is split with shlex into simple commands at `|`,
`||`, `&&`, `;`, `&`, `(` and `)` (so `$(...)` and subshells too); redirections
(`> FILE`, `2>&1`) are dropped. A simple command is e2edge's when its first word,
after environment assignments (`E2EDGE_TARGET=... e2edge models`), shell keywords
(`do`, `then`, ...) and the wrappers sudo, env, time, nohup and exec (with their
options), is `e2edge`, a path ending in `/bin/e2edge` (`.venv/bin/e2edge`) or a
python running `-m e2edge.cli`. Words are taken literally: `$VAR` and placeholders such
as DIR, PKG or FILE are plain values, and an upper-case placeholder or a lone shell
variable written as the value of an option that takes a number or a choice
(`--max-new-tokens N`, `--seed $s` in a loop) stands for a valid value of it. An inline span in the
form of the CLI's error line (`e2edge generate: error: ...`) is output, not a command.

The two rules
- Fenced blocks are strict: the words must parse exactly as written, every flag
  known, every choice valid, every required argument present. So a fenced block holds
  real command lines: placeholders as plain words, no `[optional]` groups and no
  `a|b` alternatives (a `|` there is a pipe).
- Inline spans name a command or an option in passing (`e2edge prune ... --out CKPT`,
  `e2edge export llm --weights int4\\|fp16` in a table), so they are strict about names
  and lenient about completeness. `[` and `]` are dropped and `...` words ignored; a `|`
  with no space on either side (`\\|` in a table) separates alternatives, and every
  alternative is checked. The words before the first option must be a command path
  (`e2edge eval ppl`; a group alone, `e2edge bench`, names the group); every `--flag`
  must be an option of that command (global ones before it); a value written after an
  option that has choices must be one of them, unless it is an upper-case placeholder
  (WHAT). Positional words are not checked, and required options may be left out.
"""

from __future__ import annotations

import argparse
import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from markdown_blocks import REPO_ROOT, CodeBlock, code_blocks, doc_files, prose, shell_commands

from e2edge.cli import build_parser
from e2edge.reference.cli import subparsers

SHELL_LANGUAGES = {"sh", "bash", "shell", "console", ""}
KEYWORDS = {"do", "then", "else", "elif", "if", "while", "until", "!", "{"}
WRAPPERS = {"sudo": {"-u", "-g", "-C", "-D"}, "env": {"-u", "-C"}, "time": {"-o", "-f"},
            "/usr/bin/time": {"-o", "-f"}, "nohup": set(), "exec": {"-a"}}
REDIRECTIONS = {">", ">>", "<", "<<", "<<<", ">&", "&>", "&>>", "<&", ">|", "<>"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FD_BEFORE_REDIRECTION = re.compile(r"(?<![\w-])\d+(?=[<>])")  # `2>&1` -> `>&1`
ALTERNATIVE = "\x1f"  # stands for an `a|b` bar inside one word of an inline span
ALTERNATIVE_BAR = re.compile(r"(?<=[^\s|])\\?\|(?=[^\s|])")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
SHELL_VARIABLE = re.compile(r"^\$(\w+|\{\w+\})$")
ERROR_LINE = re.compile(r"^e2edge [\w -]+: ")  # how the CLI prints an error, not a command


@dataclass(frozen=True)
class Command:
    where: str  # FILE:LINE
    text: str  # the command line as the doc writes it
    words: tuple[str, ...]  # what follows `e2edge`
    strict: bool  # fenced block (strict) or inline span (names only)


# ---- shell ------------------------------------------------------------------------------
def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, redirections dropped (ValueError when
    shlex cannot split it, e.g. an unclosed quote)."""
    lexer = shlex.shlex(FD_BEFORE_REDIRECTION.sub("", line), posix=True,
                        punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    current: list[str] = []
    skip_target = False
    for token in lexer:
        if skip_target:
            skip_target = False
        elif token in REDIRECTIONS:
            skip_target = True
        elif token and set(token) <= set(";&|()"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def e2edge_arguments(words: list[str]) -> list[str] | None:
    """The words after `e2edge` when this simple command runs e2edge, else None."""
    i = 0
    while i < len(words):
        word = words[i]
        if ASSIGNMENT.match(word) or word in KEYWORDS:
            i += 1
        elif word in WRAPPERS:
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 2 if words[i] in WRAPPERS[word] else 1
        else:
            break
    if i >= len(words):
        return None
    word = words[i]
    if word == "e2edge" or word.endswith("/bin/e2edge"):
        return words[i + 1:]
    if Path(word).name.startswith("python") and words[i + 1:i + 3] == ["-m", "e2edge.cli"]:
        return words[i + 3:]
    return None


# ---- finding the commands -----------------------------------------------------------
def _name(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else path.name


def _console_lines(block: CodeBlock) -> CodeBlock:
    """A console block with its output left out: the `$ ` lines and their continuations."""
    kept: list[str] = []
    continued = False
    for line in block.text.splitlines():
        if line.lstrip().startswith("$ ") or continued:
            kept.append(line)
            continued = line.rstrip().endswith("\\")
    return replace(block, text="\n".join(kept) + "\n")


def _line_of(block: CodeBlock, command: str, start: int) -> int:
    """Index of the block line where `command` (joined by shell_commands) begins."""
    lines = block.text.splitlines()
    for index in range(start, len(lines)):
        head = lines[index].strip().removeprefix("$ ").removesuffix("\\").strip()
        if head and command.startswith(head):
            return index
    return start


def fenced_commands(path: Path) -> tuple[list[Command], list[str]]:
    """The e2edge commands of the file's shell blocks, and the lines shlex cannot split."""
    found: list[Command] = []
    unsplittable: list[str] = []
    for block in code_blocks(path):
        if block.language not in SHELL_LANGUAGES:
            continue
        if block.language == "console":
            block = _console_lines(block)
        position = 0
        for line in shell_commands(block):
            position = _line_of(block, line, position)
            where = f"{_name(block.path)}:{block.line + 1 + position}"
            try:
                commands = simple_commands(line)
            except ValueError as e:
                if "e2edge" in line:
                    unsplittable.append(f"{where} (fenced): {line}\n    shlex cannot "
                                        f"split it: {e}")
                continue
            for words in commands:
                arguments = e2edge_arguments(words)
                if arguments is not None:
                    found.append(Command(where, line, tuple(arguments), strict=True))
    return found, unsplittable


def inline_commands(path: Path) -> list[Command]:
    """The e2edge commands of the file's inline code spans (outside fenced blocks)."""
    text = prose(path)
    found: list[Command] = []
    for span in CODE_SPAN.finditer(text):
        content = " ".join(span.group(2).split())
        if "e2edge" not in content or "\n\n" in span.group(2) or ERROR_LINE.match(content):
            continue
        line = text.count("\n", 0, span.start()) + 1
        marked = ALTERNATIVE_BAR.sub(ALTERNATIVE, " ".join(content.split()))
        try:
            commands = simple_commands(marked)
        except ValueError:
            commands = [marked.split()]
        for words in commands:
            arguments = e2edge_arguments(words)
            if arguments is not None:
                found.append(Command(f"{_name(path)}:{line}", content,
                                     tuple(arguments), strict=False))
    return found


# ---- the two rules --------------------------------------------------------------------
def _fill_placeholders(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> list[str]:
    """`--seed $s`, `--top-k K` -> `--seed 1`, `--top-k 1`: a value the shell or the
    reader supplies is taken to be a valid one (the option's first choice, else 1, which
    int, float and str options all take)."""
    options = dict(parser._option_string_actions)
    current = parser
    for word in words:  # down the command path: the options of each parser on it
        subcommands = _subcommands(current)
        if subcommands is None or word not in subcommands:
            continue
        current = subcommands[word]
        options.update(current._option_string_actions)
    filled = list(words)
    for i in range(1, len(filled)):
        placeholder = SHELL_VARIABLE.match(filled[i]) or PLACEHOLDER.match(filled[i])
        if placeholder and filled[i - 1] in options:
            choices = options[filled[i - 1]].choices
            filled[i] = str(next(iter(choices))) if choices else "1"
    return filled


def parse_error(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> str | None:
    """What argparse says about these words, or None when they parse."""
    said = io.StringIO()
    try:
        with redirect_stderr(said), redirect_stdout(io.StringIO()):
            parser.parse_args(_fill_placeholders(parser, words))
    except SystemExit as e:
        if e.code not in (0, None):
            return said.getvalue().strip().splitlines()[-1]
    return None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    found = subparsers(parser)
    return found.choices if found is not None else None


def _option_error(parser: argparse.ArgumentParser, words: list[str], i: int) -> str | None:
    """Is words[i], an option, one of `parser`'s, and its written value a valid choice?"""
    name, equals, value = words[i].partition("=")
    for alternative in name.split(ALTERNATIVE):
        if alternative not in parser._option_string_actions:
            return f"{parser.prog}: no option {alternative}"
    action = parser._option_string_actions[name.split(ALTERNATIVE)[0]]
    if not equals and i + 1 < len(words) and not words[i + 1].startswith("-"):
        value = words[i + 1] if action.nargs != 0 else ""
    if action.choices is None or not value:
        return None
    for alternative in value.split(ALTERNATIVE):
        if PLACEHOLDER.match(alternative):
            continue
        try:
            choice = action.type(alternative) if callable(action.type) else alternative
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            choice = alternative
        if choice not in action.choices:
            return (f"{parser.prog}: {name}: {alternative!r} is not one of "
                    f"{', '.join(map(str, action.choices))}")
    return None


def loose_error(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> str | None:
    """The inline-span rule (module docstring): names strict, completeness not."""
    cleaned = [w.replace("[", "").replace("]", "").replace("…", "...") for w in words]
    cleaned = [w.removesuffix("...") for w in cleaned]
    cleaned = [w for w in cleaned if w and w != ALTERNATIVE]
    return _loose(parser, cleaned)


def _loose(parser: argparse.ArgumentParser, words: list[str]) -> str | None:
    i = 0
    while i < len(words) and words[i].startswith("-"):  # options before a command
        error = _option_error(parser, words, i)
        if error:
            return error
        i += 1
    subcommands = _subcommands(parser)
    if subcommands is not None:
        if i == len(words):
            return None  # the group (or e2edge) named alone
        names = words[i].split(ALTERNATIVE)
        for name in names:
            if name not in subcommands:
                return (f"{parser.prog}: no command {name!r} (commands: "
                        f"{', '.join(subcommands)})")
            error = _loose(subcommands[name], words[i + 1:])
            if error:
                return error
        return None
    for j in range(i, len(words)):
        if words[j].startswith("-") and words[j] not in ("-", "--"):
            error = _option_error(parser, words, j)
            if error:
                return error
    return None


def offenders(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    fenced, unsplittable = fenced_commands(path)
    found = [*unsplittable]
    for command in fenced + inline_commands(path):
        error = (parse_error if command.strict else loose_error)(parser, command.words)
        if error:
            kind = "fenced" if command.strict else "inline"
            found.append(f"{command.where} ({kind}): {' '.join(command.text.split())}\n"
                         f"    {error}")
    return found


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_documented_command_parses(path, parser):
    bad = offenders(path, parser)
    assert not bad, (f"{len(bad)} command line(s) in {path.relative_to(REPO_ROOT)} do not "
                     "parse with e2edge's CLI (rules: tests/docs/test_doc_commands.py):\n"
                     + "\n".join(bad))


def test_the_docs_name_commands_at_all():
    """The search itself works on the real pages: the CLI reference alone names every
    command inline, so a search that found nothing would make the test above vacuous."""
    reference = REPO_ROOT / "docs" / "reference" / "cli.md"
    named = {" ".join(c.words[:2]) for c in inline_commands(reference)}
    assert {"serve", "generate", "bench llm", "train lm", "export vit"} <= named


# ---- the rules on made-up lines -------------------------------------------------------
def _fenced_errors(tmp_path, parser, line: str, language: str = "sh") -> list[str]:
    page = tmp_path / "page.md"
    page.write_text(f"```{language}\n{line}\n```\n", encoding="utf-8")
    return offenders(page, parser)


def _inline_errors(tmp_path, parser, span: str) -> list[str]:
    page = tmp_path / "page.md"
    page.write_text(f"| a | {span} |\n", encoding="utf-8")
    return offenders(page, parser)


def test_shell_around_a_command_is_understood():
    line = ("for s in 0 1; do sudo -u e2edge E2EDGE_TARGET=x .venv/bin/e2edge models --json "
            "2>&1 | tee out.txt & done; X=$(python3 -m e2edge.cli doctor --json) > /dev/null")
    found = [e2edge_arguments(words) for words in simple_commands(line)]
    assert [f for f in found if f is not None] == [["models", "--json"], ["doctor", "--json"]]
    assert e2edge_arguments(["pip", "install", "e2edge[cpu]"]) is None
    assert e2edge_arguments(["systemctl", "reload", "e2edge"]) is None


def test_fenced_blocks_are_strict(tmp_path, parser):
    assert _fenced_errors(tmp_path, parser, "e2edge models --json") == []
    assert _fenced_errors(tmp_path, parser, "$ e2edge models --json\nmodels: 2",
                          "console") == []
    renamed = _fenced_errors(tmp_path, parser, "e2edge generate --model m --max-tokens 3 hi")
    assert len(renamed) == 1 and "--max-tokens" in renamed[0] and ":2 (fenced)" in renamed[0]
    assert _fenced_errors(tmp_path, parser, "e2edge export llm --model M --out P "
                          "[--weights int4]")  # an optional group is not a command line
    assert _fenced_errors(tmp_path, parser, "e2edge generate hi")  # --model is required


def test_inline_spans_are_strict_about_names_only(tmp_path, parser):
    def errors(span: str) -> list[str]:
        return _inline_errors(tmp_path, parser, span)

    assert errors("`e2edge export llm --weights int4\\|fp16 [--name N]`") == []
    assert errors("`e2edge prune ... --out CKPT`") == []
    assert errors("`e2edge eval ppl\\|choice`") == []
    assert errors("`e2edge bench`") == []
    assert errors("`e2edge generate: error: NOT_FOUND: model 'x'`") == []  # output
    assert errors("`e2edge export llm --weights int3`")
    assert errors("`e2edge eval ppl\\|choise`")
    assert errors("`e2edge models --jsn`")
    assert errors("`e2edge --debug serve --listen`") == []
    assert errors("`e2edge serve --debug`")  # global options go before the command
