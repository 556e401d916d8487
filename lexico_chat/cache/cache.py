"""``LexicoCache``: a transformers ``Cache`` whose full-attention layers are ``LexicoLayer``s.

The cache only chooses layers: full-attention layers (per ``config.layer_types``, or all layers for
models without it) get a ``LexicoLayer`` with that layer's dictionaries; sliding-window and other
layer kinds keep transformers' own layer classes (e.g. ``DynamicSlidingWindowLayer`` on Gemma 3's
local layers, which are bounded by their window and stay uncompressed).

Typical use::

    cache = LexicoCache.from_model(model, dictionary, sparsity=8)   # also selects "lexico" attention
    out = model.generate(input_ids, past_key_values=cache, max_new_tokens=64)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING, Cache, get_layer_types_and_kwargs

from lexico_chat.cache.attention import ATTENTION_NAME, use_lexico_attention
from lexico_chat.cache.layer import LexicoLayer
from lexico_chat.cache.memory import CacheMemory, cache_memory
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.errors import LexicoError
from lexico_chat.models import model_dims
from lexico_chat.rope import RopeProbe, RopeTable, probe_for

__all__ = ["LexicoCache", "COMPRESSED_LAYER_TYPES"]

COMPRESSED_LAYER_TYPES = ("full_attention",)


class LexicoCache(Cache):
    """Sparse-coded KV cache (Lexico) for a decoder.

    Parameters
    ----------
    dictionary : per-layer key/value dictionaries, (num_layers, head_dim, N) each.
    sparsity : atoms per vector s.
    config : the model config; its ``layer_types`` decide which layers are compressed. Without a
        config every layer is a LexicoLayer.
    buffer, window : full-precision recent tokens, and tokens compressed at a time.
    coef_dtype : coefficient storage dtype (float8_e4m3fn, float16 or float32).
    select_dtype : dtype OMP uses to choose atoms.
    rope_probe : the model's ``RopeProbe`` (``lexico_chat.rope.probe_for(model)``), needed when the
        dictionary codes pre-RoPE keys; ``from_model`` passes it. The cache then holds one shared
        ``RopeTable`` (the rotation of every token), counted in ``memory()``.
    """

    def __init__(
        self,
        dictionary: LexicoDictionary,
        sparsity: int = 8,
        *,
        config=None,
        buffer: int = 128,
        window: int = 32,
        coef_dtype: torch.dtype = torch.float8_e4m3fn,
        select_dtype: torch.dtype = torch.bfloat16,
        rope_probe: RopeProbe | None = None,
    ) -> None:
        self.rope_table: RopeTable | None = None
        if dictionary.meta.key_space == "pre_rope":
            if rope_probe is None:
                raise LexicoError(
                    "a pre-RoPE key dictionary needs the model's rotary probe: use LexicoCache.from_model"
                )
            self.rope_table = RopeTable()
        rope = None if self.rope_table is None else (self.rope_table, rope_probe)
        layer_types, layer_kwargs = _layer_plan(config, dictionary.meta.num_layers)
        if len(layer_types) != dictionary.meta.num_layers:
            raise LexicoError(
                f"dictionary has {dictionary.meta.num_layers} layers but the model has {len(layer_types)}"
            )
        layers = []
        for index, (kind, kwargs) in enumerate(zip(layer_types, layer_kwargs, strict=True)):
            if kind in COMPRESSED_LAYER_TYPES:
                keys, values = dictionary.layer(index)
                layers.append(
                    LexicoLayer(
                        keys,
                        values,
                        sparsity,
                        buffer=buffer,
                        window=window,
                        coef_dtype=coef_dtype,
                        select_dtype=select_dtype,
                        rope=rope,
                    )
                )
            else:
                layers.append(DYNAMIC_LAYER_TYPE_MAPPING[kind](**kwargs))
        super().__init__(layers=layers)
        self._config = None if config is None else config.get_text_config(decoder=True)
        self.dictionary = dictionary
        self.sparsity, self.buffer, self.window, self.coef_dtype = sparsity, buffer, window, coef_dtype

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, dictionary: LexicoDictionary, sparsity: int = 8, **kwargs
    ) -> LexicoCache:
        """A cache for ``model`` (checked against the dictionary); switches the model to "lexico" attention."""
        dims = model_dims(model.config)
        meta = dictionary.meta
        if (meta.num_layers, meta.head_dim) != (dims.num_layers, dims.head_dim):
            raise LexicoError(
                f"dictionary is for {meta.num_layers} layers x head_dim {meta.head_dim}, "
                f"the model has {dims.num_layers} layers x head_dim {dims.head_dim}"
            )
        if not 1 <= sparsity <= min(meta.head_dim, meta.atoms):
            raise LexicoError(f"sparsity must be in [1, {min(meta.head_dim, meta.atoms)}], got {sparsity}")
        if kwargs.get("buffer", 0) < 0 or kwargs.get("window", 1) < 1:
            raise LexicoError(
                f"buffer must be >= 0 and window >= 1, got buffer={kwargs.get('buffer')}, window={kwargs.get('window')}"
            )
        use_lexico_attention(model)
        probe = probe_for(model) if meta.key_space == "pre_rope" else None
        return cls(dictionary, sparsity, config=model.config, rope_probe=probe, **kwargs)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Delegate to the layer; refuses to run under an attention that would ignore compressed tokens."""
        if self._config is not None and self._config._attn_implementation != ATTENTION_NAME:
            raise LexicoError(
                f"LexicoCache needs the model's attention set to {ATTENTION_NAME!r} (got "
                f"{self._config._attn_implementation!r}): build it with LexicoCache.from_model(model, ...) or call "
                "lexico_chat.cache.use_lexico_attention(model) first"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    @property
    def lexico_layers(self) -> list[LexicoLayer]:
        return [layer for layer in self.layers if isinstance(layer, LexicoLayer)]

    def memory(self) -> CacheMemory:
        """Exact bytes held by the cache, per layer and in total (see ``lexico_chat.cache.memory``)."""
        return cache_memory(self.layers, self.rope_table)

    # the shared rotary table follows every whole-cache change of tokens or batch rows
    def reset(self) -> None:
        super().reset()
        if self.rope_table is not None:
            self.rope_table.reset()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.rope_table is not None:
            self.rope_table.select_batch(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.rope_table is not None:
            self.rope_table.select_batch(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.rope_table is not None and self.rope_table.length:
            batch = self.rope_table.view()[0].shape[0]
            self.rope_table.select_batch(torch.arange(batch).repeat_interleave(repeats))


def _layer_plan(config, num_layers: int) -> tuple[Sequence[str], Sequence[dict]]:
    """Layer kinds and their constructor kwargs from a model config (text part)."""
    if config is None:
        return ["full_attention"] * num_layers, [{}] * num_layers
    text = config.get_text_config(decoder=True)
    return get_layer_types_and_kwargs(text)
