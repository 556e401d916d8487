"""Exporting a cache's contents as named tensors and loading them back into a fresh cache.

LexicoLayer: compressed codes (indices, coefficients) and the full-precision buffer, keys and values.
Other layers (DynamicLayer, DynamicSlidingWindowLayer): their held keys and values, plus the number
of tokens they have seen (sliding layers keep only a window of them). A cache with a pre-RoPE key
dictionary also saves the rotation of every token (``rope.cos``, ``rope.sin``; the table stores only
the compressed tokens' and recomputes the rest). ``import_cache`` trusts its input:
a file is checked first by ``lexico_chat.engine.session_file``.
"""

from __future__ import annotations

import torch

from lexico_chat.cache.layer import LexicoLayer

__all__ = ["DENSE_PARTS", "LEXICO_PARTS", "export_cache", "import_cache"]

LEXICO_PARTS = ("key_idx", "key_coef", "value_idx", "value_coef", "key_buffer", "value_buffer")
DENSE_PARTS = ("keys", "values")


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
            for name, tensor in zip(LEXICO_PARTS, parts):
                tensors[f"layer{i}.{name}"] = tensor.detach().contiguous().cpu()
            facts.append({"kind": "lexico"})
        else:
            tensors[f"layer{i}.keys"] = layer.keys.detach().contiguous().cpu()
            tensors[f"layer{i}.values"] = layer.values.detach().contiguous().cpu()
            facts.append({"kind": "dense", "seen": int(layer.get_seq_length())})
    table = getattr(cache, "rope_table", None)
    if table is not None and table.seen:  # the file holds every token's rotation, buffered ones recomputed
        cos, sin = table.rotation(0, table.seen)
        tensors["rope.cos"], tensors["rope.sin"] = cos.contiguous().cpu(), sin.contiguous().cpu()
    return tensors, facts


def import_cache(cache, tensors: dict[str, torch.Tensor], facts: list[dict], device: torch.device) -> None:
    """Fill an empty ``cache`` (same model and settings) from checked ``export_cache`` output."""
    if "rope.cos" in tensors:
        compressed = [tensors[f"layer{i}.key_idx"].shape[2] for i, f in enumerate(facts) if f["kind"] == "lexico"]
        cos, sin = tensors["rope.cos"].to(device), tensors["rope.sin"].to(device)
        cache.rope_table.load(cos, sin, max(compressed, default=0))
    for i, (layer, fact) in enumerate(zip(cache.layers, facts)):
        if fact["kind"] == "lexico":
            _import_lexico(layer, {p: tensors[f"layer{i}.{p}"].to(device) for p in LEXICO_PARTS})
        elif fact["kind"] == "dense":
            keys, values = (tensors[f"layer{i}.{p}"].to(device) for p in DENSE_PARTS)
            _import_dense(layer, keys, values, int(fact["seen"]))


def _import_lexico(layer: LexicoLayer, parts: dict[str, torch.Tensor]) -> None:
    keys, values = parts["key_buffer"], parts["value_buffer"]
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
