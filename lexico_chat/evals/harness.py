"""Plumbing shared by the comparison evals (``compare``, ``agreement``, ``niah``): flags, inputs,
attention switching, the fp16-normalised byte count of any cache (``kv_fraction``), and saving figures."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator, Sequence

import torch

from lexico_chat.errors import LexicoError

__all__ = [
    "add_comparison_options",
    "check_sparsities",
    "kv_fraction",
    "load_text_ids",
    "new_figure",
    "save_figure",
    "seed_everything",
    "attention_restored",
]


def add_comparison_options(parser: argparse.ArgumentParser, sparsities: Sequence[int], plot: bool = True) -> None:
    """--model/--device, --dictionary, --atoms, --sparsity S [S ...], --layer-budget, --buffer/--window, --seed,
    --json and (``plot``) --plot OUT.png."""
    from lexico_chat.options import (
        add_cache_options,
        add_json_option,
        add_layer_budget_option,
        add_model_options,
        positive_int,
    )

    add_model_options(parser)
    parser.add_argument("--dictionary", default=None, help="dictionary file (default: looked up for the model)")
    parser.add_argument("--atoms", type=positive_int, default=4096, help="dictionary size N (default 4096)")
    parser.add_argument(
        "--sparsity",
        type=positive_int,
        nargs="+",
        default=list(sparsities),
        help=f"Lexico sparsities s to evaluate (default {' '.join(map(str, sparsities))})",
    )
    add_layer_budget_option(parser)
    add_cache_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    add_json_option(parser)
    if plot:
        parser.add_argument("--plot", default=None, metavar="OUT.png", help="also save a figure (matplotlib)")


def check_sparsities(requested: Sequence[int], dictionary, *, drop_invalid: bool = False) -> list[int]:
    """The sparsities usable with ``dictionary`` (1 <= s <= min(head_dim, atoms)), sorted, unique.

    Out-of-range values raise LexicoError, or are dropped when ``drop_invalid`` (the defaults)."""
    limit = min(dictionary.meta.head_dim, dictionary.meta.atoms)
    bad = sorted({s for s in requested if not 1 <= s <= limit})
    if bad and not drop_invalid:
        raise LexicoError(f"--sparsity values must be in [1, {limit}] for this dictionary, got {bad}")
    good = sorted({s for s in requested if 1 <= s <= limit})
    if not good:
        raise LexicoError(f"no --sparsity in [1, {limit}] for this dictionary (asked for {list(requested)})")
    return good


def load_text_ids(tokenizer, text: str, max_tokens: int, max_positions: int) -> torch.Tensor:
    """(1, T) int64 ids of the first ``max_tokens`` tokens of ``text``; T >= 2 and T <= the model's positions."""
    if max_tokens > max_positions:
        raise LexicoError(f"--max-tokens must be at most the model's {max_positions} positions, got {max_tokens}")
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]
    if ids.shape[1] < 2:
        raise LexicoError(f"the text holds {ids.shape[1]} token(s); at least 2 are needed")
    return ids


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (the evals draw nothing else at random)."""
    torch.manual_seed(seed)


@contextlib.contextmanager
def attention_restored(model: torch.nn.Module) -> Iterator[None]:
    """Run a block that may switch ``model``'s attention implementation; restore the original afterwards."""
    previous = model.config._attn_implementation
    try:
        yield
    finally:
        if model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)


def kv_fraction(cache) -> float:
    """Bytes held / fp16 bytes of every token seen, of any cache of this project (``cache.memory()``: the one
    count of ``lexico_chat.memory`` for Lexico, KIVI and eviction alike)."""
    return float(cache.memory().kv_fraction)


def new_figure(**kwargs):
    """A matplotlib ``Figure`` (Agg canvas, no pyplot state); LexicoError if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise LexicoError("--plot needs matplotlib: pip install 'lexico-chat[plot]'") from None
    return Figure(**kwargs)


def save_figure(figure, path: str) -> None:
    """Save a matplotlib figure as PNG; an unwritable path raises LexicoError."""
    try:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    except OSError as err:
        raise LexicoError(f"--plot: cannot write {path} ({err.strerror or err})") from None
