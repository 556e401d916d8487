"""``LexicoCache``: a ``PlannedCache`` whose full-attention layers are ``LexicoLayer``s.

The cache only chooses layers (``lexico_chat.cache.plan``): full-attention layers get a ``LexicoLayer``
with that layer's dictionaries; sliding-window and other layer kinds keep transformers' own classes.

Typical use::

    cache = LexicoCache.from_model(model, dictionary, CacheConfig(sparsity=8))  # selects "lexico" attention
    out = model.generate(input_ids, past_key_values=cache, max_new_tokens=64)
"""

from __future__ import annotations

import torch

from lexico_chat.attention import ATTENTION_NAME, LAYER_TAG, use_lexico_attention
from lexico_chat.budget import sparsity_plan
from lexico_chat.cache.layer import LexicoLayer
from lexico_chat.cache.plan import PlannedCache, layer_plan
from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.errors import LexicoError
from lexico_chat.heap import retain_freed_memory
from lexico_chat.models import model_dims
from lexico_chat.rope import RopeProbe, RopeTable, probe_for

__all__ = ["LexicoCache"]


class LexicoCache(PlannedCache):
    """Sparse-coded KV cache (Lexico) for a decoder.

    Parameters
    ----------
    dictionary : per-layer key/value dictionaries, (num_layers, head_dim, N) each.
    config : the cache settings (``lexico_chat.config.CacheConfig``; its sparsity, buffer, window and
        storage dtypes), checked against the dictionary.
    model_config : the model config; its ``layer_types`` decide which layers are compressed. Without
        one every layer is a LexicoLayer.
    rope_probe : the model's ``RopeProbe`` (``lexico_chat.rope.probe_for(model)``), needed when the
        dictionary codes pre-RoPE keys; ``from_model`` passes it. The cache then holds one shared
        ``RopeTable`` (the rotation of every compressed token), counted in ``memory()``.
    """

    def __init__(
        self,
        dictionary: LexicoDictionary,
        config: CacheConfig | None = None,
        *,
        model_config=None,
        rope_probe: RopeProbe | None = None,
    ) -> None:
        config = (config or CacheConfig()).validate(None, dictionary)
        self.rope_table: RopeTable | None = None
        if dictionary.meta.key_space == "pre_rope":
            if rope_probe is None:
                raise LexicoError(
                    "a pre-RoPE key dictionary needs the model's rotary probe: use LexicoCache.from_model"
                )
            exact = config.buffer_dtype == "float32"  # lossless settings: the model's own fp32 rotation
            self.rope_table = RopeTable(dtype=torch.float32 if exact else torch.float16)
            self.rope_table.probe = rope_probe
        rope = None if self.rope_table is None else (self.rope_table, rope_probe)
        kinds, _ = layer_plan(model_config, dictionary.meta.num_layers)
        if len(kinds) != dictionary.meta.num_layers:
            raise LexicoError(f"dictionary has {dictionary.meta.num_layers} layers but the model has {len(kinds)}")

        self.sparsities = sparsity_plan(config, dictionary.meta)  # (key, value) atoms of every layer

        def make_layer(index: int) -> LexicoLayer:
            keys, values = dictionary.layer(index)
            return LexicoLayer(keys, values, config, rope=rope, sparsities=self.sparsities[index])

        super().__init__(make_layer, model_config, dictionary.meta.num_layers)
        self._model_config = None if model_config is None else model_config.get_text_config(decoder=True)
        self.dictionary = dictionary
        self.config = config

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, dictionary: LexicoDictionary, config: CacheConfig | None = None
    ) -> LexicoCache:
        """A cache for ``model`` (checked against the dictionary); switches the model to "lexico" attention.

        On the CPU it also keeps freed memory in the process (``lexico_chat.heap.retain_freed_memory``): the
        attention's and the OMP's working tensors would otherwise be faulted in again at every call."""
        config = (config or CacheConfig()).validate(model_dims(model.config), dictionary)
        weight = next(model.parameters(), None)
        if weight is not None and weight.device.type == "cpu":
            retain_freed_memory()
        use_lexico_attention(model)
        probe = probe_for(model) if dictionary.meta.key_space == "pre_rope" else None
        return cls(dictionary, config, model_config=model.config, rope_probe=probe)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Delegate to the layer (a LexicoLayer's values tagged like its keys); refuses to run under an attention
        that would ignore compressed tokens."""
        implementation = None if self._model_config is None else self._model_config._attn_implementation
        if implementation is not None and implementation != ATTENTION_NAME:
            raise LexicoError(
                f"LexicoCache needs the model's attention set to {ATTENTION_NAME!r} (got {implementation!r}): build "
                "it with LexicoCache.from_model(model, ...) or call lexico_chat.attention.use_lexico_attention(model)"
            )
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        layer = self.layers[layer_idx]
        if isinstance(layer, LexicoLayer):  # values tagged too: the attention detects keys that lost the tag
            setattr(values, LAYER_TAG, layer)
        return keys, values

    @property
    def lexico_layers(self) -> list[LexicoLayer]:
        return [layer for layer in self.layers if isinstance(layer, LexicoLayer)]

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
        if self.rope_table is not None and self.rope_table.batch is not None:
            self.rope_table.select_batch(torch.arange(self.rope_table.batch).repeat_interleave(repeats))
