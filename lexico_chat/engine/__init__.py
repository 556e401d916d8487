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
    """Load the model named in ``options`` and open a ChatSession on it (slow: loads weights)."""
    from lexico_chat.engine.session import ChatSession
    from lexico_chat.models import load_model

    if options.cache.lexico and options.dictionary:
        from lexico_chat.dictionary import LexicoDictionary

        LexicoDictionary.load(options.dictionary)  # a bad file fails before the slow model load
    loaded = load_model(options.model, device=options.device)
    return ChatSession(loaded, options)
