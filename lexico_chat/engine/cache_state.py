"""Exporting a cache's contents as named tensors and loading them back into a fresh cache.

LexicoLayer: compressed codes (indices, coefficients) and the full-precision buffer, keys and values.
Other layers (DynamicLayer, DynamicSlidingWindowLayer): their held keys and values, plus the number
of tokens they have seen (sliding layers keep only a window of them). A cache with a pre-RoPE key
dictionary also saves its rotary table (``rope.cos``, ``rope.sin``).
"""

from __future__ import annotations

import torch

from lexico_chat.cache.layer import LexicoLayer

__all__ = ["export_cache", "import_cache"]

_LEXICO_PARTS = ("key_idx", "key_coef", "value_idx", "value_coef", "key_buffer", "value_buffer")


def export_cache(cache) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Named CPU tensors and per-layer JSON facts describing ``cache`` (nothing is densified)."""
    tensors: dict[str, torch.Tensor] = {}
    facts: list[dict] = []
    for i, layer in enumerate(cache.layers):
        if not layer.is_initialized:
            facts.append({"kind": "empty"})
            continue
        if isinstance(layer, LexicoLayer):
            layer.settle()  # each token once: codes, or buffer
            key_idx, key_coef = layer.key_codes.view()
            value_idx, value_coef = layer.value_codes.view()
            parts = (key_idx, key_coef, value_idx, value_coef, layer.key_buffer.view(), layer.value_buffer.view())
            for name, tensor in zip(_LEXICO_PARTS, parts):
                tensors[f"layer{i}.{name}"] = tensor.detach().contiguous().cpu()
            facts.append({"kind": "lexico"})
        else:
            tensors[f"layer{i}.keys"] = layer.keys.detach().contiguous().cpu()
            tensors[f"layer{i}.values"] = layer.values.detach().contiguous().cpu()
            facts.append({"kind": "dense", "seen": int(layer.get_seq_length())})
    table = getattr(cache, "rope_table", None)
    if table is not None and table.length:
        cos, sin = table.view()
        tensors["rope.cos"], tensors["rope.sin"] = cos.contiguous().cpu(), sin.contiguous().cpu()
    return tensors, facts


def import_cache(cache, tensors: dict[str, torch.Tensor], facts: list[dict], device: torch.device) -> None:
    """Fill an empty ``cache`` (same model and settings) from ``export_cache`` output."""
    if len(facts) != len(cache.layers):
        raise ValueError(f"saved cache has {len(facts)} layers, this model {len(cache.layers)}")
    table = getattr(cache, "rope_table", None)
    holds_tokens = any(fact["kind"] != "empty" for fact in facts)
    if (table is not None and holds_tokens) != ("rope.cos" in tensors):  # an empty cache saves no table
        raise ValueError("saved cache and this cache disagree on pre-RoPE key coding")
    if "rope.cos" in tensors:
        table.append(tensors["rope.cos"].to(device), tensors["rope.sin"].to(device))
    for i, (layer, fact) in enumerate(zip(cache.layers, facts)):
        if fact["kind"] == "empty":
            continue
        if fact["kind"] == "lexico":
            if not isinstance(layer, LexicoLayer):
                raise ValueError(f"layer {i} is compressed in the file but not in this cache")
            _import_lexico(layer, {p: tensors[f"layer{i}.{p}"].to(device) for p in _LEXICO_PARTS})
        else:
            _import_dense(
                layer, tensors[f"layer{i}.keys"].to(device), tensors[f"layer{i}.values"].to(device), int(fact["seen"])
            )


def _import_lexico(layer: LexicoLayer, parts: dict[str, torch.Tensor]) -> None:
    keys, values = parts["key_buffer"], parts["value_buffer"]
    sparsities = (parts["key_idx"].shape[-1], parts["value_idx"].shape[-1])
    if sparsities != (layer.key_sparsity, layer.value_sparsity) or parts["key_coef"].dtype != layer.coef_dtype:
        raise ValueError("saved codes were made with another sparsity or coefficient dtype")
    layer.lazy_initialization(keys[:, :, :0], values[:, :, :0])
    layer.key_codes.append(parts["key_idx"], parts["key_coef"])
    layer.value_codes.append(parts["value_idx"], parts["value_coef"])
    layer.key_buffer.append(keys)
    layer.value_buffer.append(values)
    layer.buffer_start = layer.query_start = layer.compressed_length


def _import_dense(layer, keys: torch.Tensor, values: torch.Tensor, seen: int) -> None:
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = seen
