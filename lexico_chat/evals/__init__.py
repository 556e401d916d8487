"""`lexico-chat eval …` commands: each module has ``register(subparsers)`` and a function returning
the JSON-ready result, so the same figures are available from Python."""

from __future__ import annotations

import importlib

EVAL_MODULES = ("omp_speed", "rre", "perplexity", "speed", "compare", "niah", "agreement")


def register_all(subparsers) -> None:
    for name in EVAL_MODULES:
        try:
            module = importlib.import_module(f"lexico_chat.evals.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"lexico_chat.evals.{name}":
                raise
            continue  # an eval not written yet
        module.register(subparsers)
