"""Exact memory accounting of a ``LexicoCache``, computed from the tensors each layer holds.

Figures (bytes):

* ``compressed_bytes``: indices + coefficients of the compressed tokens (the filled part).
* ``allocated_bytes``: the same stores at their held capacity (capacity doubles, so up to 2x).
* ``buffer_bytes``: full-precision tokens held (LexicoLayer buffers and uncompressed layers, e.g.
  Gemma 3 sliding-window layers), in the dtype they are held in; ``buffer_allocated_bytes`` at
  capacity (for uncompressed layers: the bytes of the storage their tensors keep alive).
* ``fp16_bytes``: what an fp16 cache of the same tokens per layer would take (2 x tokens x heads x
  head_dim x 2 bytes, per batch row).
* ``dictionary_bytes``: the per-layer dictionaries as cast on the device (fp32), reported apart.
* ``rope_bytes``: with a pre-RoPE key dictionary, the rotation (cos, sin) of every token, shared by
  all layers (``lexico_chat.rope.RopeTable``); 0 otherwise. A per-token cost, so counted as KV.
* ``kv_fraction = (compressed_bytes + buffer_bytes + rope_bytes) / fp16_bytes``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lexico_chat.cache.layer import LexicoLayer

__all__ = ["CacheMemory", "LayerMemory", "cache_memory", "layer_memory"]


@dataclass(frozen=True)
class LayerMemory:
    """Bytes and tokens of one layer; ``kind`` is "lexico" or "dense" (an uncompressed layer)."""

    layer: int
    kind: str
    compressed_tokens: int
    buffer_tokens: int
    compressed_bytes: int
    allocated_bytes: int
    buffer_bytes: int
    buffer_allocated_bytes: int
    fp16_bytes: int
    dictionary_bytes: int


@dataclass(frozen=True)
class CacheMemory:
    """Totals over layers; token counts are those of the compressed layers (equal in all of them)."""

    compressed_bytes: int
    allocated_bytes: int
    buffer_bytes: int
    buffer_allocated_bytes: int
    fp16_bytes: int
    dictionary_bytes: int
    compressed_tokens: int
    buffer_tokens: int
    layers: tuple[LayerMemory, ...]
    rope_bytes: int = 0
    rope_allocated_bytes: int = 0

    @property
    def kv_bytes(self) -> int:
        """Bytes of every per-token tensor: compressed codes, buffers and the rotary table."""
        return self.compressed_bytes + self.buffer_bytes + self.rope_bytes

    @property
    def kv_fraction(self) -> float:
        """kv_bytes / fp16 bytes; 0.0 for an empty cache."""
        return self.kv_bytes / self.fp16_bytes if self.fp16_bytes else 0.0

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["kv_fraction"] = self.kv_fraction
        data["kv_bytes"] = self.kv_bytes
        return data


def _fp16_bytes(tokens: int, batch: int, heads: int, head_dim: int) -> int:
    return 2 * tokens * batch * heads * head_dim * 2


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def layer_memory(index: int, layer) -> LayerMemory:
    """Memory of one cache layer (a LexicoLayer, or any layer holding ``keys``/``values`` tensors)."""
    if isinstance(layer, LexicoLayer):
        parts = layer.memory_parts()
        tokens = layer.get_seq_length()
        if layer.is_initialized:
            b, h, _, m = layer.key_buffer.data.shape
            fp16 = _fp16_bytes(tokens, b, h, m)
        else:
            fp16 = 0
        return LayerMemory(
            index,
            "lexico",
            layer.compressed_length,
            layer.buffer_length,
            parts["compressed"],
            parts["allocated"],
            parts["buffer"],
            parts["buffer_allocated"],
            fp16,
            parts["dictionary"],
        )
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if keys is None or keys.ndim != 4 or values is None:
        return LayerMemory(index, "dense", 0, 0, 0, 0, 0, 0, 0, 0)
    tokens = keys.shape[2]
    held = _nbytes(keys) + _nbytes(values)
    storage = keys.untyped_storage().nbytes() + values.untyped_storage().nbytes()
    fp16 = _fp16_bytes(tokens, keys.shape[0], keys.shape[1], keys.shape[3])
    return LayerMemory(index, "dense", 0, tokens, 0, 0, held, storage, fp16, 0)


def cache_memory(layers, rope_table=None) -> CacheMemory:
    """Sum ``layer_memory`` over ``layers`` (a cache's ``.layers`` list), plus a shared ``RopeTable``."""
    per = tuple(layer_memory(i, layer) for i, layer in enumerate(layers))
    lexico = [p for p in per if p.kind == "lexico"]
    return CacheMemory(
        compressed_bytes=sum(p.compressed_bytes for p in per),
        allocated_bytes=sum(p.allocated_bytes for p in per),
        buffer_bytes=sum(p.buffer_bytes for p in per),
        buffer_allocated_bytes=sum(p.buffer_allocated_bytes for p in per),
        fp16_bytes=sum(p.fp16_bytes for p in per),
        dictionary_bytes=sum(p.dictionary_bytes for p in per),
        compressed_tokens=max((p.compressed_tokens for p in lexico), default=0),
        buffer_tokens=max((p.buffer_tokens for p in lexico), default=0),
        layers=per,
        rope_bytes=0 if rope_table is None else rope_table.nbytes(),
        rope_allocated_bytes=0 if rope_table is None else rope_table.nbytes(False),
    )
