"""Baseline KV caches that Lexico is measured against at equal memory: KIVI-style quantization and
sink + recent-window eviction. Both are transformers cache layers with exact byte accounting
(``cache.memory()`` returns the same ``lexico_chat.memory.Memory`` as every other cache)."""

from lexico_chat.baselines.cache import BaselineLayer
from lexico_chat.baselines.eviction import EvictionCache, SinkWindowLayer
from lexico_chat.baselines.kivi import KiviCache, KiviLayer

__all__ = ["BaselineLayer", "EvictionCache", "KiviCache", "KiviLayer", "SinkWindowLayer"]
