"""`lexico-chat` command line: a thin argparse layer over the library."""

from __future__ import annotations

import argparse
import logging
import sys

from lexico_chat.errors import LexicoError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (default ``sys.argv[1:]``): the eval subcommands, whose modules import torch,
    are only added when ``argv`` names ``eval``, so that the chat UI opens before torch has loaded."""
    from lexico_chat import chat_cli, inventory_cli, train_cli
    from lexico_chat.server import cli as server_cli

    parser = _Parser(prog="lexico-chat", description="Chat with a Lexico-compressed KV cache.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    chat_cli.add_arguments(parser)
    parser.set_defaults(func=chat_cli.run)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train_cli.register(commands)
    inventory_cli.register(commands)
    server_cli.register(commands)
    eval_parser = commands.add_parser("eval", help="benchmarks and quality measurements")
    eval_commands = eval_parser.add_subparsers(dest="eval_command", metavar="EVAL", required=True, parser_class=_Parser)
    if "eval" in (sys.argv[1:] if argv is None else argv):
        from lexico_chat import evals

        evals.register_all(eval_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return int(done.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except LexicoError as err:
        print(f"lexico-chat: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lexico-chat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
