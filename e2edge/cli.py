"""The `e2edge` command: one entry point, one small module per subcommand.

COMMANDS maps a command path to the module that implements it. Each module has a
docstring (its help), `add_arguments(parser)` and `run(args) -> int`, and imports
its heavy dependencies inside `run`, so `e2edge serve` starts on a box without
torch. Errors are one line on stderr and a non-zero exit; `--debug` shows the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from e2edge import __version__

COMMANDS: dict[str, str] = {
    "train lm": "exporter.cli.train_lm",
    "train vit": "exporter.cli.train_vit",
    "train random-llm": "exporter.cli.train_random_llm",
    "export llm": "exporter.cli.export_llm",
    "export vit": "exporter.cli.export_vit",
    "prune": "exporter.cli.prune",
    "eval ppl": "exporter.cli.eval_ppl",
    "eval choice": "exporter.cli.eval_choice",
    "eval vit": "exporter.cli.eval_vit",
    "eval saliency": "exporter.cli.eval_saliency",
    "build-engine": "plugins_trt.cli.build_engine",
    "serve": "runtime.cli.serve",
    "generate": "runtime.cli.generate",
    "chat": "runtime.cli.chat",
    "models": "runtime.cli.models",
    "classify": "runtime.cli.classify",
    "power": "runtime.cli.power",
    "doctor": "runtime.cli.doctor",
    "proto": "runtime.cli.proto",
    "selftest": "e2edge.selftest.command",
    "bench llm": "e2edge.bench.llm",
    "bench vit": "e2edge.bench.vit",
    "bench serve": "e2edge.bench.serve",
    "bench serve-vit": "e2edge.bench.serve_vit",
    "bench load": "e2edge.bench.load",
    "bench sweep-decode": "e2edge.bench.sweep_decode",
    "bench kernels": "e2edge.bench.kernels",
}

GROUP_HELP = {
    "train": "train a small LLM or a ViT from local data, or write a random-weight LLM",
    "export": "export a checkpoint to a model package (LLM or ViT)",
    "eval": "evaluate a checkpoint or package: perplexity, multiple choice, ViT accuracy, "
            "saliency scorers",
    "bench": "benchmarks that write JSON: LLM decode, ViT, the daemon, load, CUDA kernels",
}

EXIT_ERROR = 1


def _import_command(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            return None  # this command is not part of this build
        raise


def command_named(argv: Sequence[str]) -> str | None:
    """The command path that `argv` starts with ("bench kernels"), if it names one."""
    words = [word for word in argv if not word.startswith("-")][:2]
    for count in (2, 1):
        if " ".join(words[:count]) in COMMANDS:
            return " ".join(words[:count])
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command `only` (its module alone is
    imported: `e2edge bench kernels` on a GPU box's bare Python needs no grpc or yaml)."""
    parser = argparse.ArgumentParser(
        prog="e2edge", description="Energy-efficient edge AI for NVIDIA Jetson."
    )
    parser.add_argument("--version", action="version", version=f"e2edge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, module_name in COMMANDS.items():
        if only is not None and path != only:
            continue
        module = _import_command(module_name)
        if module is None:
            continue
        words = path.split()
        subparsers = top
        if len(words) == 2:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=GROUP_HELP.get(words[0]),
                                       description=GROUP_HELP.get(words[0]))
                groups[words[0]] = group.add_subparsers(
                    dest=f"{words[0]}_command", metavar="WHAT", required=True
                )
            subparsers = groups[words[0]]
        sub = subparsers.add_parser(
            words[-1],
            help=summary(module.__doc__),
            description=(module.__doc__ or "").strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run, command_path=path)
    return parser


def summary(docstring: str | None) -> str | None:
    """A command's one-line help in `e2edge --help`: its docstring's first paragraph,
    joined (a summary that wraps onto a second line must not be cut)."""
    if not docstring:
        return None
    return " ".join(docstring.strip().split("\n\n")[0].split())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_named(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        print("e2edge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the CLI's one place that turns any failure into one line
        if args.debug:
            raise
        print(f"e2edge {args.command_path}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    return int(result or 0)


def one_line(error: BaseException) -> str:
    """An error as the CLI prints it: one line, the type named unless it is a user error."""
    from runtime.errors import E2edgeError

    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (E2edgeError, OSError, ValueError)):
        return text
    return f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
