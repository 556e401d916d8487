"""Default command: chat with the model (plain prompt loop until the engine and TUI land)."""

from __future__ import annotations

import argparse

from lexico_chat.options import add_cache_options, add_dictionary_options, add_model_options

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_dictionary_options(parser)
    add_cache_options(parser)
    parser.add_argument("--prompt", default=None, help="answer one prompt and exit (headless)")
    parser.add_argument("--max-new-tokens", type=int, default=256)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
