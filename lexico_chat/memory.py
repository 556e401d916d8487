"""``Memory``: exact bytes a KV cache holds, one type for every cache (Lexico, KIVI, eviction, full).

Each figure is computed from the tensors a layer actually holds (``numel * element_size``), never
estimated. Cache layers of this project report their own ``LayerMemory`` (``layer.memory(index)``);
transformers' own layers (``DynamicLayer``, sliding-window layers) are counted from their ``keys`` /
``values`` tensors by ``dense_layer_memory``.

Figures, per layer and summed:

* ``compressed_bytes``: what stands for tokens in compressed form: Lexico's indices + coefficients,
  KIVI's packed codes + scales + zero-points.
* ``buffer_bytes``: tokens held in full precision (Lexico's buffer, KIVI's residual window, eviction's
  kept tokens, uncompressed layers), in the dtype they are held in.
* ``allocated_bytes``: the storage reserved for both (stores grow geometrically, so up to 2x).
* ``fp16_bytes``: what the same model's full cache would hold for this layer in fp16
  (2 x tokens x batch x kv_heads x head_dim x 2 bytes): every token seen for a full-attention layer,
  the tokens held for an uncompressed (e.g. sliding-window) layer.
* ``dictionary_bytes``: Lexico's per-layer dictionaries, reported apart (a fixed cost, not per token).
* ``rope_bytes`` (cache-wide): a pre-RoPE Lexico cache's rotation (cos, sin) of every compressed token
  (``lexico_chat.rope.RopeTable``), shared by all layers; a per-token cost, so it counts as KV.

``kv_bytes = compressed + buffer + rope`` and ``kv_fraction = kv_bytes / fp16_bytes``: the fraction
every command reports (status bar, ``--json``, ``eval perplexity``, ``eval compare``). No torch import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["LayerMemory", "Memory", "cache_memory", "dense_layer_memory", "fp16_bytes", "tensor_bytes"]


def fp16_bytes(tokens: int, batch: int, heads: int, head_dim: int) -> int:
    """Bytes of keys and values of ``tokens`` tokens in fp16: 2 x tokens x batch x heads x head_dim x 2."""
    return 2 * tokens * batch * heads * head_dim * 2


def tensor_bytes(*tensors) -> int:
    """Bytes of the elements of ``tensors`` (None counts 0)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class LayerMemory:
    """Bytes and tokens of one cache layer; ``kind`` names the layer ("lexico", "kivi", "eviction",
    "dense" for an uncompressed layer, "empty" before its first token)."""

    layer: int
    kind: str
    compressed_tokens: int = 0
    buffer_tokens: int = 0
    seen_tokens: int = 0
    compressed_bytes: int = 0
    buffer_bytes: int = 0
    allocated_bytes: int = 0
    fp16_bytes: int = 0
    dictionary_bytes: int = 0


def _total(name: str):
    return property(lambda self: sum(getattr(layer, name) for layer in self.layers))


@dataclass(frozen=True)
class Memory:
    """Bytes held by a whole cache: its layers, plus a cache-wide rotary table (pre-RoPE Lexico)."""

    layers: tuple[LayerMemory, ...] = ()
    rope_bytes: int = 0
    rope_allocated_bytes: int = 0

    compressed_bytes = _total("compressed_bytes")
    buffer_bytes = _total("buffer_bytes")
    fp16_bytes = _total("fp16_bytes")
    dictionary_bytes = _total("dictionary_bytes")

    @property
    def allocated_bytes(self) -> int:
        """Storage reserved by every layer and the rotary table (>= kv_bytes)."""
        return sum(layer.allocated_bytes for layer in self.layers) + self.rope_allocated_bytes

    @property
    def compressed_tokens(self) -> int:
        """Tokens in compressed form (the same in every compressed layer)."""
        return max((layer.compressed_tokens for layer in self.layers), default=0)

    @property
    def buffer_tokens(self) -> int:
        """Tokens in full precision in the compressed layers (in every layer when none is compressed)."""
        compressed = [layer for layer in self.layers if layer.kind not in ("dense", "empty")]
        return max((layer.buffer_tokens for layer in compressed or self.layers), default=0)

    @property
    def kv_bytes(self) -> int:
        """Bytes of every per-token tensor: compressed codes, full-precision tokens, rotary table."""
        return self.compressed_bytes + self.buffer_bytes + self.rope_bytes

    @property
    def kv_fraction(self) -> float | None:
        """kv_bytes / fp16 bytes of the tokens seen; None for an empty cache (no ratio to show)."""
        return self.kv_bytes / self.fp16_bytes if self.fp16_bytes else None

    def to_dict(self) -> dict:
        """Totals and per-layer figures as a JSON-able dict."""
        totals = ("compressed_bytes", "buffer_bytes", "allocated_bytes", "fp16_bytes", "dictionary_bytes")
        data = {name: getattr(self, name) for name in totals}
        data.update(
            rope_bytes=self.rope_bytes,
            kv_bytes=self.kv_bytes,
            kv_fraction=self.kv_fraction,
            compressed_tokens=self.compressed_tokens,
            buffer_tokens=self.buffer_tokens,
            layers=[dataclasses.asdict(layer) for layer in self.layers],
        )
        return data


def dense_layer_memory(index: int, layer) -> LayerMemory:
    """Memory of a transformers layer holding ``keys``/``values`` (b, h, T, m) tensors (or nothing yet)."""
    keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
    if keys is None or values is None or keys.ndim != 4:
        return LayerMemory(index, "empty")
    held = tensor_bytes(keys, values)
    storage = keys.untyped_storage().nbytes() + values.untyped_storage().nbytes()
    seen = int(layer.get_seq_length())
    b, h, tokens, m = keys.shape
    return LayerMemory(
        index,
        "dense",
        buffer_tokens=tokens,
        seen_tokens=seen,
        buffer_bytes=held,
        allocated_bytes=storage,
        fp16_bytes=fp16_bytes(tokens, b, h, m),  # a full cache of this model holds the same tokens
    )


def cache_memory(cache) -> Memory:
    """``Memory`` of any transformers ``Cache`` (ours or transformers' own), from its ``layers``."""
    layers = tuple(
        layer.memory(i) if hasattr(layer, "memory") else dense_layer_memory(i, layer)
        for i, layer in enumerate(cache.layers)
    )
    table = getattr(cache, "rope_table", None)
    if table is None:
        return Memory(layers)
    return Memory(layers, rope_bytes=table.nbytes(), rope_allocated_bytes=table.nbytes(False))
