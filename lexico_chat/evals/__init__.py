"""`lexico-chat eval …` commands: each module has ``register(subparsers)`` and a function returning
the JSON-ready result, so the same figures are available from Python."""

from __future__ import annotations

from lexico_chat.evals import agreement, compare, niah, omp_speed, perplexity, rre, speed

EVAL_MODULES = (omp_speed, rre, perplexity, speed, compare, niah, agreement)


def register_all(subparsers) -> None:
    """Add every eval's subcommand to ``subparsers``, in the order of ``EVAL_MODULES``."""
    for module in EVAL_MODULES:
        module.register(subparsers)
