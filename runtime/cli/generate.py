"""Stream a generation from a running daemon: text to stdout, stats to stderr.

    e2edge generate --target 127.0.0.1:50051 --model demo --max-new-tokens 64 "To be, or not"
    e2edge generate --model chat --message system="Be brief." --message user="Hi"

The text is printed as it arrives; the finish reason, token counts, time to first
token and decode speed (and energy, when the daemon has a power source) follow on
stderr. With --message (repeatable, ROLE=CONTENT, in conversation order) instead of a
prompt, the daemon renders the conversation with the package's chat template and the
reply ends at the template's end-of-turn token (FAILED_PRECONDITION: the package has
no chat template). A gRPC error is one line with its status code name and exit status 1.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="the prompt text (or give --message)")
    parser.add_argument("--message", action="append", default=[], metavar="ROLE=CONTENT",
                        type=chat_message,
                        help="a chat message instead of a prompt, e.g. user=Hello (repeatable)")
    add_model_arguments(parser)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The daemon, the model and the sampling options (`generate` and `chat`)."""
    from runtime.cli import connection

    connection.add_arguments(parser)  # --target, --tls-ca, --tls-cert, --tls-key, --token
    parser.add_argument("--model", required=True, help="model name (see `e2edge models`)")
    parser.add_argument("--max-new-tokens", type=int,
                        help="most tokens to generate (default 128; prompt + these must fit "
                             "the model's context)")
    parser.add_argument("--temperature", type=float,
                        help="sampling temperature; 0 = greedy (the default)")
    parser.add_argument("--top-k", type=int,
                        help="sample from the K most likely tokens; 0 = off (the default)")
    parser.add_argument("--top-p", type=float,
                        help="sample from the most likely tokens whose probabilities add up "
                             "to P, in (0, 1]; 1 = off (the default)")
    parser.add_argument("--repetition-penalty", type=float,
                        help="> 1 makes tokens already seen less likely; 1 = off (the default)")
    parser.add_argument("--seed", type=int,
                        help="sampling seed: same seed + same prompt -> same text (default: "
                             "a fresh one per request)")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop before this text (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="always generate --max-new-tokens tokens")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="deadline in seconds (default: none); past it the call ends "
                             "with DEADLINE_EXCEEDED")
    parser.add_argument("--request-id", default="",
                        help="id for the daemon's request log and the responses (default: "
                             "the daemon makes one up)")


def chat_message(text: str) -> tuple[str, str]:
    """ROLE=CONTENT -> (role, content); the content may hold "=" itself."""
    role, sep, content = text.partition("=")
    if not sep or not role:
        raise argparse.ArgumentTypeError(f"expected ROLE=CONTENT (e.g. user=Hello), got {text!r}")
    return role, content


def request_options(args: argparse.Namespace) -> dict:
    """The options of EdgeClient.generate / chat that the command line sets."""
    return dict(
        timeout_s=args.timeout,
        stop=args.stop,
        request_id=args.request_id,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        ignore_eos=args.ignore_eos or None,
    )


def stream_text(stream) -> tuple[str, object]:
    """Write each message's text to stdout as it arrives; return (the text, the last message)."""
    import sys

    pieces, last = [], None
    for message in stream:
        sys.stdout.write(message.text)
        sys.stdout.flush()
        pieces.append(message.text)
        last = message
    return "".join(pieces), last


def run(args: argparse.Namespace) -> int:
    import sys

    from runtime import client_security
    from runtime.client import EdgeClient

    if (args.prompt is None) == (not args.message):
        raise ValueError("give either a prompt or --message ROLE=CONTENT (repeatable)")
    security = client_security.from_args(args)
    with EdgeClient(args.target, security=security) as client:
        if args.message:
            stream = client.chat(args.model, args.message, **request_options(args))
        else:
            stream = client.generate(args.model, args.prompt, **request_options(args))
        _, last = stream_text(stream)
    if sys.stdout.isatty():
        sys.stdout.write("\n")
    if last is not None and last.HasField("stats"):
        print(format_stats(last), file=sys.stderr)
    return 0


def format_stats(message) -> str:
    """The last message's facts as one line."""
    from runtime.proto.e2edge.v1 import runtime_pb2 as pb

    s = message.stats
    reason = pb.FinishReason.Name(message.finish_reason).removeprefix("FINISH_REASON_").lower()
    line = (
        f"[{reason}] {s.prompt_tokens} prompt + {s.completion_tokens} generated tokens; "
        f"first token {s.time_to_first_token_s * 1e3:.1f} ms, "
        f"decode {s.decode_tokens_per_s:.1f} tok/s, total {s.total_s * 1e3:.1f} ms "
        f"(queue {s.queue_s * 1e3:.1f} ms); request {message.request_id}"
    )
    if s.HasField("energy") and s.energy.HasField("joules"):
        line += f"; energy {s.energy.joules:.3f} J ({s.energy.power_source})"
        if s.HasField("joules_per_token"):
            line += f", {s.joules_per_token * 1e3:.2f} mJ/token"
        if s.HasField("tokens_per_joule"):
            line += f", {s.tokens_per_joule:.1f} tokens/J"
    return line
