"""Lexico KV cache: sparse-coded keys/values (transformers 5.x); attention over them: ``lexico_chat.attention``."""

from lexico_chat.cache.cache import LexicoCache
from lexico_chat.cache.layer import LexicoLayer
from lexico_chat.cache.plan import PlannedCache

__all__ = [
    "LexicoCache",
    "LexicoLayer",
    "PlannedCache",
]
