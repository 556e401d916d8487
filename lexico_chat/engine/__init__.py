"""The chat engine: ChatSession and its data types."""

from __future__ import annotations

from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.types import ChatEngine, IngestProgress, Message, SamplingConfig, SessionStats, TurnUsage

__all__ = [
    "ChatEngine",
    "IngestProgress",
    "Message",
    "SamplingConfig",
    "SessionOptions",
    "SessionStats",
    "TurnUsage",
    "load_session",
]


def load_session(options: SessionOptions):
    """Load the model named in ``options`` and open a ChatSession on it (slow: loads weights); a missing
    dictionary raises MissingDictionaryError (``engine.first_run.open_session`` can offer to train it)."""
    from lexico_chat.engine.first_run import open_session

    return open_session(options, offer=False)
