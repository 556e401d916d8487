"""``PlannedCache``: a transformers ``Cache`` whose full-attention layers come from a factory.

The cache only chooses layers: full-attention layers (per ``config.layer_types``, or every layer for
models without it) get ``make_layer(index)``; sliding-window and other layer kinds keep transformers'
own classes (e.g. ``DynamicSlidingWindowLayer`` on Gemma 3's local layers, which are bounded by their
window and stay uncompressed). ``LexicoCache`` and the baselines (KIVI, eviction) are PlannedCaches.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, Cache, CacheLayerMixin, get_layer_types_and_kwargs

from lexico_chat.memory import Memory, cache_memory

__all__ = ["PlannedCache", "FULL_ATTENTION", "layer_plan"]

FULL_ATTENTION = "full_attention"


def layer_plan(config=None, num_layers: int | None = None) -> tuple[list[str], list[dict]]:
    """Layer kinds and their constructor kwargs from a model config (its text part), or ``num_layers``
    full-attention layers when there is no config."""
    if config is None:
        if num_layers is None:
            raise ValueError("give `config` (a model config) or `num_layers` (an int), got neither")
        return [FULL_ATTENTION] * num_layers, [{}] * num_layers
    kinds, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    return list(kinds), list(kwargs)


class PlannedCache(Cache):
    """A cache with ``make_layer(index)`` at every full-attention layer.

    Parameters
    ----------
    make_layer : builds the empty cache layer for layer ``index`` (a ``CacheLayerMixin``).
    config : the model config (its ``layer_types`` decide which layers are full attention).
    num_layers : layer count when ``config`` is None (then every layer is full attention).
    """

    def __init__(
        self, make_layer: Callable[[int], CacheLayerMixin], config=None, num_layers: int | None = None
    ) -> None:
        kinds, kwargs = layer_plan(config, num_layers)
        if num_layers is not None and len(kinds) != num_layers:
            raise ValueError(f"the model has {len(kinds)} layers, {num_layers} were expected")
        layers = [
            make_layer(i) if kind == FULL_ATTENTION else DYNAMIC_LAYER_TYPE_MAPPING[kind](**kw)
            for i, (kind, kw) in enumerate(zip(kinds, kwargs))
        ]
        super().__init__(layers=layers)

    def memory(self) -> Memory:
        """Exact bytes held, per layer and in total (``lexico_chat.memory``)."""
        return cache_memory(self)
