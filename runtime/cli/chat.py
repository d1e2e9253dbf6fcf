r"""Chat with a model of a running daemon: each line read is your turn, the reply streams back.

    e2edge chat --target 127.0.0.1:50051 --model demo [--system "Be brief."]
    printf 'Hi\nAnd then?\n' | e2edge chat --model demo     # stdin may be a pipe

The conversation is kept: every request sends all turns so far, which the daemon
renders with the package's chat template (a package without one answers
FAILED_PRECONDITION). Replies go to stdout, one line each; the prompt "> " (on a
terminal) and, with --stats, each reply's stats go to stderr. /exit or the end of
input ends the chat; /reset forgets the turns so far. An error ends it with a
one-line message.
"""

from __future__ import annotations

import argparse

EXIT = "/exit"
RESET = "/reset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from runtime.cli.generate import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument("--system", metavar="TEXT", help="a system message opening the chat")
    parser.add_argument("--stats", action="store_true",
                        help="print each reply's stats line on stderr")


def run(args: argparse.Namespace) -> int:
    import sys

    from runtime import client_security
    from runtime.cli.generate import format_stats, request_options, stream_text
    from runtime.client import EdgeClient

    opening = [("system", args.system)] if args.system else []
    conversation = list(opening)
    with EdgeClient(args.target, security=client_security.from_args(args)) as client:
        while (line := _read_turn(sys.stdin, sys.stderr)) is not None:
            if line == EXIT:
                break
            if line == RESET:
                conversation = list(opening)
                continue
            if not line:
                continue
            conversation.append(("user", line))
            reply, last = stream_text(client.chat(args.model, conversation,
                                                  **request_options(args)))
            sys.stdout.write("\n")
            sys.stdout.flush()
            conversation.append(("assistant", reply))
            if args.stats and last is not None and last.HasField("stats"):
                print(format_stats(last), file=sys.stderr)
    return 0


def _read_turn(stdin, prompt_out) -> str | None:
    """The next line without its newline; None at the end of input."""
    if stdin.isatty():
        prompt_out.write("> ")
        prompt_out.flush()
    line = stdin.readline()
    return None if not line else line.rstrip("\r\n").strip()
