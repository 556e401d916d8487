"""argparse options shared by several commands (kept in one place so flags mean the same everywhere)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and --device."""
    parser.add_argument(
        "--model",
        default=None,
        help="local model folder, .gguf file or hub id (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (accelerate device map)")


def add_dictionary_options(parser: argparse.ArgumentParser, sparsity: int | None = 8) -> None:
    """--dictionary, --atoms and --sparsity."""
    parser.add_argument("--dictionary", default=None, help="dictionary file (default: looked up for the model)")
    parser.add_argument("--atoms", type=positive_int, default=4096, help="dictionary size N (default 4096)")
    parser.add_argument("--sparsity", type=positive_int, default=sparsity, help="atoms per vector s (default 8)")


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """--buffer and --window of the compressed cache."""
    parser.add_argument("--buffer", type=int, default=128, help="recent tokens kept in full precision (default 128)")
    parser.add_argument("--window", type=positive_int, default=32, help="tokens compressed at a time (default 32)")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
