"""Lexico KV cache: sparse-coded keys/values with compressed-domain attention (transformers 5.x)."""

from lexico_chat.cache.attention import (
    ATTENTION_NAME,
    lexico_attention_forward,
    register_lexico_attention,
    use_lexico_attention,
)
from lexico_chat.cache.cache import LexicoCache
from lexico_chat.cache.kernels import CompressedKV, compressed_attention
from lexico_chat.cache.layer import LexicoLayer
from lexico_chat.cache.memory import CacheMemory, LayerMemory
from lexico_chat.cache.prefill import prefill

__all__ = [
    "ATTENTION_NAME",
    "CacheMemory",
    "CompressedKV",
    "LayerMemory",
    "LexicoCache",
    "LexicoLayer",
    "compressed_attention",
    "lexico_attention_forward",
    "prefill",
    "register_lexico_attention",
    "use_lexico_attention",
]
