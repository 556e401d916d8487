"""argparse options shared by several commands (kept in one place so flags mean the same everywhere)."""

from __future__ import annotations

import argparse

from lexico_chat.config import ADAPTIVE_BELOW, CACHE_KINDS, CODE_LENGTHS, LAYER_BUDGETS, CacheConfig
from lexico_chat.training import DEFAULT_BUDGET_S

DEFAULTS = CacheConfig()  # every cache flag's default comes from here


def positive_int(text: str) -> int:
    return _positive(int(text), text, "a positive integer")


def positive_float(text: str) -> float:
    return _positive(float(text), text, "a number > 0")


def _positive(value, text: str, what: str):
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and --device."""
    parser.add_argument(
        "--model",
        default=None,
        help="model folder, .gguf file, name of a model in the Hugging Face cache (`lexico-chat models`), well-known "
        "model name or hub id (default: the embedded SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: the CUDA GPU, a device map over several, else mps, else CPU), cpu, cuda, cuda:N or mps",
    )


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def add_dictionary_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--dictionary, --atoms and --sparsity (``defaults=False``: unset flags stay None, e.g. to be filled
    from a saved session)."""
    d = DEFAULTS if defaults else None
    parser.add_argument("--dictionary", default=None, help="dictionary file (default: looked up for the model)")
    parser.add_argument(
        "--atoms", type=positive_int, default=d and d.atoms, help=f"dictionary size N (default {DEFAULTS.atoms})"
    )
    parser.add_argument(
        "--sparsity",
        type=positive_int,
        default=d and d.sparsity,
        help=f"atoms per vector s (default {DEFAULTS.sparsity})",
    )
    for part in ("key", "value"):
        parser.add_argument(
            f"--{part}-sparsity",
            type=positive_int,
            default=None,
            help=f"atoms per {part} vector, when it should differ from --sparsity",
        )
    add_layer_budget_option(parser, defaults=defaults)


def add_layer_budget_option(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--layer-budget auto|uniform|profile and --code-length adaptive|fixed: how the bytes of --sparsity are spent
    over the layers and over the vectors of a window (``defaults`` as in ``add_dictionary_options``)."""
    parser.add_argument(
        "--layer-budget",
        choices=LAYER_BUDGETS,
        default=DEFAULTS.layer_budget if defaults else None,
        help="'profile': spend the bytes of --sparsity unevenly over the layers, by the dictionary's measured "
        "sensitivity (lower perplexity at the same bytes; see the README); 'uniform': the same s in every layer; "
        f"'auto': profile where the dictionary has one; default {DEFAULTS.layer_budget}",
    )
    parser.add_argument(
        "--code-length",
        choices=CODE_LENGTHS,
        default=DEFAULTS.code_length if defaults else None,
        help="'adaptive': within each window of --window tokens, vectors that code badly get more atoms and the rest "
        "fewer, in the bytes of --sparsity atoms each (lower perplexity at the same bytes; see the README); "
        f"'fixed': every vector gets the same atoms; 'auto': adaptive below s={ADAPTIVE_BELOW}; default "
        f"{DEFAULTS.code_length}",
    )


def add_cache_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--buffer and --window of the compressed cache (``defaults`` as in ``add_dictionary_options``)."""
    d = DEFAULTS if defaults else None
    parser.add_argument(
        "--buffer",
        type=non_negative_int,
        default=d and d.buffer,
        help=f"recent tokens every query sees in full precision (default {DEFAULTS.buffer})",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=d and d.window,
        help=f"tokens compressed at a time (default {DEFAULTS.window})",
    )


CACHE_FLAGS = (
    "kind",
    "sparsity",
    "key_sparsity",
    "value_sparsity",
    "layer_budget",
    "code_length",
    "atoms",
    "buffer",
    "window",
)  # CacheConfig fields set by flags


def cache_config(args: argparse.Namespace, saved: dict | None = None) -> CacheConfig:
    """The CacheConfig the flags ask for: a flag given wins, then the ``saved`` settings (every CacheConfig
    field of a session file, 0 included), then the defaults."""
    fields = set(CacheConfig.__dataclass_fields__)
    values = {name: value for name, value in (saved or {}).items() if name in fields and value is not None}
    for name in CACHE_FLAGS:
        given = getattr(args, "cache" if name == "kind" else name, None)
        if given is not None and not isinstance(given, list):  # a list of sparsities: the eval sweeps them
            values[name] = given
    return CacheConfig(**values)


def add_cache_kind_option(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """--cache lexico|full."""
    parser.add_argument(
        "--cache",
        choices=CACHE_KINDS,
        default=DEFAULTS.kind if defaults else None,
        help=f"KV cache kind (default {DEFAULTS.kind})",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_train_budget_option(parser: argparse.ArgumentParser) -> None:
    """--train-budget: the minutes the trainer sizes its vectors and rounds to, when it picks them itself."""
    parser.add_argument(
        "--train-budget",
        type=positive_float,
        default=DEFAULT_BUDGET_S / 60,
        metavar="MIN",
        help="minutes a dictionary training without explicit --max-vectors/--iters should take on this device, "
        f"measured by a short probe (default {DEFAULT_BUDGET_S / 60:g})",
    )
