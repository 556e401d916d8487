"""``BaselineCache``: a transformers ``Cache`` whose full-attention layers come from a layer factory,
and its exact memory accounting.

Like ``LexicoCache``, the cache only chooses layers: full-attention layers (per ``config.layer_types``,
or every layer for models without it) get ``make_layer()``; sliding-window and other layer kinds keep
transformers' own classes. Baseline layers report ``held_bytes()`` (bytes of the tensors they hold)
and ``seen_tokens``; other layers are counted from their ``keys``/``values`` tensors.

``kv_fraction = held bytes / fp16 bytes of every token seen`` (2 x tokens x batch x kv_heads x
head_dim x 2 bytes per layer), measured over all layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, Cache, CacheLayerMixin, get_layer_types_and_kwargs

__all__ = ["BaselineCache", "BaselineLayer", "BaselineMemory", "baseline_memory", "fp16_bytes"]

FULL_ATTENTION = "full_attention"


def fp16_bytes(tokens: int, batch: int, heads: int, head_dim: int) -> int:
    """Bytes of keys and values of ``tokens`` tokens in fp16: 2 x tokens x batch x heads x head_dim x 2."""
    return 2 * tokens * batch * heads * head_dim * 2


@dataclass(frozen=True)
class BaselineMemory:
    """Bytes held by a cache and the fp16 bytes of the tokens it has seen (summed over layers)."""

    held_bytes: int
    fp16_bytes: int
    tokens: int

    @property
    def kv_fraction(self) -> float:
        """held / fp16 bytes; 0.0 for an empty cache."""
        return self.held_bytes / self.fp16_bytes if self.fp16_bytes else 0.0


def _layer_bytes(layer) -> tuple[int, int, int]:
    """(held bytes, fp16 bytes of seen tokens, seen tokens) of one layer."""
    if hasattr(layer, "held_bytes"):
        if not layer.is_initialized:
            return 0, 0, 0
        return layer.held_bytes(), fp16_bytes(layer.seen_tokens, *layer.shape), layer.seen_tokens
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if keys is None or keys.ndim != 4 or values is None:
        return 0, 0, 0
    held = keys.numel() * keys.element_size() + values.numel() * values.element_size()
    seen = layer.get_seq_length()
    return held, fp16_bytes(seen, keys.shape[0], keys.shape[1], keys.shape[3]), seen


def baseline_memory(layers) -> BaselineMemory:
    """Sum held and fp16-equivalent bytes over ``layers`` (a cache's ``.layers``); tokens = most seen."""
    per = [_layer_bytes(layer) for layer in layers]
    return BaselineMemory(sum(p[0] for p in per), sum(p[1] for p in per), max((p[2] for p in per), default=0))


class BaselineLayer(CacheLayerMixin):
    """What the baseline layers share: the tensors named in ``held_tensors`` (all with batch first) are
    everything they hold, so bytes, batch selection and reset are defined once here.

    Subclasses set ``held_tensors``, and in ``lazy_initialization`` ``dtype``, ``device`` and ``shape``
    = (batch, kv_heads, head_dim); ``seen_tokens`` counts every token received.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False
    held_tensors: tuple[str, ...] = ("keys", "values")

    def __init__(self) -> None:
        super().__init__()
        self.seen_tokens = 0

    def _begin(self, key_states: torch.Tensor) -> None:
        """Start holding (batch, kv_heads, *, head_dim) states: record dtype, device and shape, count from 0."""
        b, h, _, m = key_states.shape
        self.dtype, self.device, self.shape = key_states.dtype, key_states.device, (b, h, m)
        self.seen_tokens = 0
        self.is_initialized = True

    def _empty(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        """An empty (batch, kv_heads, 0, width) tensor on the layer's device."""
        b, h, _ = self.shape
        return torch.empty(b, h, 0, width, dtype=dtype, device=self.device)

    def held_bytes(self) -> int:
        """Bytes of every tensor held."""
        if not self.is_initialized:
            return 0
        return sum(getattr(self, name).numel() * getattr(self, name).element_size() for name in self.held_tensors)

    def get_seq_length(self) -> int:
        """Every token seen (positions of new tokens continue from there)."""
        return self.seen_tokens

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        """Drop every token."""
        self.is_initialized = False
        self.seen_tokens = 0
        for name in self.held_tensors:
            setattr(self, name, None)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be cropped: its tokens cannot be rolled back")

    def offload(self) -> None:
        return None

    def prefetch(self) -> None:
        return None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and reorder) batch rows ``indices``."""
        if self.is_initialized:
            for name in self.held_tensors:
                setattr(self, name, getattr(self, name).index_select(0, indices.to(self.device)))
            self.shape = (indices.shape[0], *self.shape[1:])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.batch_select_indices(torch.arange(self.shape[0], device=self.device).repeat_interleave(repeats))


class BaselineCache(Cache):
    """A cache with ``make_layer()`` at every full-attention layer.

    Parameters
    ----------
    make_layer : builds one empty cache layer (a ``CacheLayerMixin``).
    config : the model config (its ``layer_types`` decide which layers are full attention).
    num_layers : layer count when ``config`` is None (then every layer is full attention).
    """

    def __init__(self, make_layer: Callable[[], CacheLayerMixin], config=None, num_layers: int | None = None):
        if config is None and num_layers is None:
            raise ValueError("give `config` (a model config) or `num_layers` (an int), got neither")
        if config is None:
            kinds, kwargs = [FULL_ATTENTION] * num_layers, [{}] * num_layers
        else:
            kinds, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
        layers = [
            make_layer() if kind == FULL_ATTENTION else DYNAMIC_LAYER_TYPE_MAPPING[kind](**kw)
            for kind, kw in zip(kinds, kwargs)
        ]
        super().__init__(layers=layers)

    def memory(self) -> BaselineMemory:
        """Exact bytes held and the fp16 bytes of the tokens seen (see module docstring)."""
        return baseline_memory(self.layers)
