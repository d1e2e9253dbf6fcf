"""docs/reference/cli.md: every `e2edge` command as its argparse parser defines it.

The page walks the parser that `e2edge` itself runs (e2edge.cli.build_parser, all
commands), so its usage lines, descriptions, options, defaults and choices are the
ones `e2edge COMMAND --help` prints. It is laid out at a fixed width and never shows a
default the machine computes: an option whose help states its default (as --target's
does: it depends on $E2EDGE_TARGET and on which sockets exist) shows that help alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from e2edge.cli import COMMANDS, build_parser
from e2edge.reference.markdown import anchor, cell, code, fenced, generated_notice, table

WIDTH = 88  # usage lines are wrapped here, whatever the terminal


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    """The parser's subcommands (a group's or e2edge's own), or None for a command."""
    return next((action for action in parser._actions
                 if isinstance(action, argparse._SubParsersAction)), None)


def commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) of the top level and every group and command, in order."""
    yield "", parser
    subcommands = subparsers(parser)
    for name, sub in (subcommands.choices.items() if subcommands else ()):
        for path, found in commands(sub):
            yield f"{name} {path}".strip(), found


def subcommand_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The help entries (one per subcommand) of a parser that has subcommands."""
    subcommands = subparsers(parser)
    return list(subcommands._choices_actions) if subcommands else []


def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def invocation(action: argparse.Action) -> str:
    """`--top-k TOP_K`, `-v, --verbose`, `FILE [FILE ...]`: how the option is written."""
    if action.metavar is not None:
        metavar = action.metavar
    elif action.choices is not None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        metavar = action.dest if not action.option_strings else action.dest.upper()
    if action.nargs == 0:
        value = ""
    elif action.nargs is None:
        value = metavar
    elif action.nargs == "?":
        value = f"[{metavar}]"
    elif action.nargs == "*":
        value = f"[{metavar} ...]"
    elif action.nargs == "+":
        value = f"{metavar} [{metavar} ...]"
    else:
        value = " ".join([metavar] * int(action.nargs))
    if not action.option_strings:
        return value
    return ", ".join(f"{option} {value}".strip() for option in action.option_strings)


def help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    if action.choices is not None and action.metavar is not None:
        text += f" (one of: {', '.join(map(str, action.choices))})"
    if isinstance(action, argparse._AppendAction) and "repeat" not in text.lower():
        text += " (repeatable)"
    return text


def default_text(action: argparse.Action) -> str:
    """The default column: the parser's default, unless the help states it itself."""
    if action.required:
        return "required"
    default = action.default
    if (action.nargs == 0 or default is None or default is argparse.SUPPRESS
            or default == [] or "default" in (action.help or "").lower()):
        return ""
    return code(str(default) if default != "" else '""')


def argument_tables(parser: argparse.ArgumentParser) -> list[str]:
    parts: list[str] = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
                   and not isinstance(a, argparse._SubParsersAction)]
        if not actions:
            continue
        rows = [[code(invocation(a)), default_text(a), cell(help_text(a, parser.prog))]
                for a in actions]
        parts.append(f"{cell(group.title[0].upper() + group.title[1:])}:\n\n"
                     + table(["argument", "default", "description"], rows))
    for group in parser._mutually_exclusive_groups:
        names = ", ".join(code(a.option_strings[0]) for a in group._group_actions)
        parts.append(f"{'Exactly' if group.required else 'At most'} one of {names}.")
    return parts


def section(path: str, parser: argparse.ArgumentParser) -> str:
    title = f"e2edge {path}".strip()
    parts = [f"## {title}", fenced(usage(parser))]
    if parser.description:
        parts.append(fenced(parser.description.strip()))
    subcommands = subcommand_actions(parser)
    if subcommands and path:  # a group: its commands, each with a section of its own
        rows = [[f"[{code(f'{title} {a.dest}')}]({anchor(f'{title} {a.dest}')})",
                 cell(a.help or "")] for a in subcommands]
        parts.append(table(["command", "what it does"], rows))
    parts += argument_tables(parser)
    return "\n\n".join(parts)


def render() -> str:
    parser = build_parser()
    found = dict(commands(parser))
    missing = sorted(set(COMMANDS) - set(found))
    if missing:  # a command module that cannot be imported here drops out of the parser
        raise RuntimeError(f"the parser lacks {', '.join(missing)}: install e2edge with "
                           "every extra the reference documents")
    index = [[f"[{code(f'e2edge {a.dest}')}]({anchor(f'e2edge {a.dest}')})", cell(a.help or "")]
             for a in subcommand_actions(parser)]
    intro = (
        "# Command-line reference\n\n"
        "Every `e2edge` command, generated from the parser the command itself runs "
        "(e2edge/cli.py and the module of each command); each command's `--help` prints "
        "the same, e.g. `e2edge generate --help`. Global options (`--debug`, `--verbose`) "
        "go before the command: `e2edge --debug serve --config FILE`.\n\n"
        + table(["command", "what it does"], index)
    )
    sections = [section(path, sub) for path, sub in found.items()]
    return "\n\n".join([generated_notice("the argparse parser of e2edge/cli.py"), intro,
                        *sections]) + "\n"
