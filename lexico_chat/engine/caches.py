"""Choosing the session's cache: LexicoCache with the model's dictionary, or a full DynamicCache."""

from __future__ import annotations

from transformers import DynamicCache

from lexico_chat.cache import LexicoCache
from lexico_chat.engine.options import SessionOptions
from lexico_chat.lookup import find_dictionary
from lexico_chat.models import LoadedModel

__all__ = ["make_cache", "resolve_dictionary", "use_dense_attention"]


def resolve_dictionary(loaded: LoadedModel, options: SessionOptions):
    """The dictionary the options ask for (None for a full cache), checked against the model."""
    if not options.cache.lexico:
        return None
    cache = options.cache
    dictionary = find_dictionary(loaded.model_id, loaded.dims, cache.atoms, options.dictionary, sparsity=cache.sparsity)
    options.cache.validate(loaded.dims, dictionary)
    return dictionary


def make_cache(loaded: LoadedModel, options: SessionOptions, dictionary):
    """A fresh, empty cache for one conversation."""
    if not options.cache.lexico:
        use_dense_attention(loaded.model)
        return DynamicCache(config=loaded.model.config)
    return LexicoCache.from_model(loaded.model, dictionary, options.cache)


def use_dense_attention(model) -> None:
    """Switch ``model`` to transformers' sdpa attention (every cache but Lexico's returns dense keys and values)."""
    if model.config._attn_implementation != "sdpa":
        model.set_attn_implementation("sdpa")
