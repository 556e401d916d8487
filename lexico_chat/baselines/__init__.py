"""Baseline KV caches that Lexico is measured against at equal memory: KIVI-style quantization and
sink + recent-window eviction. Both are transformers cache layers with exact byte accounting."""

from lexico_chat.baselines.cache import BaselineCache, BaselineMemory, baseline_memory
from lexico_chat.baselines.eviction import EvictionCache, SinkWindowLayer
from lexico_chat.baselines.kivi import KiviCache, KiviLayer

__all__ = [
    "BaselineCache",
    "BaselineMemory",
    "EvictionCache",
    "KiviCache",
    "KiviLayer",
    "SinkWindowLayer",
    "baseline_memory",
]
