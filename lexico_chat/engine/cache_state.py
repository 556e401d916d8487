"""Exporting a cache's contents as named tensors and loading them back into a fresh cache.

LexicoLayer: compressed codes (indices, coefficients) and the full-precision buffer, keys and values; codes of
varying length (``AdaptiveCodeStore``) as the store's runs, (batch, heads, atoms), with each token's atom count.
Other layers (DynamicLayer, DynamicSlidingWindowLayer): their held keys and values, plus the number
of tokens they have seen (sliding layers keep only a window of them). A cache with a pre-RoPE key
dictionary also saves the rotation of every token (``rope.cos``, ``rope.sin``; the table stores only
the compressed tokens' and recomputes the rest). ``import_cache`` trusts its input:
a file is checked first by ``lexico_chat.engine.session_file``.
"""

from __future__ import annotations

import torch

from lexico_chat.cache.layer import LexicoLayer
from lexico_chat.cache.store import AdaptiveCodeStore

__all__ = ["ADAPTIVE_PARTS", "DENSE_PARTS", "LEXICO_PARTS", "compressed_tokens", "export_cache", "import_cache"]

LEXICO_PARTS = ("key_idx", "key_coef", "value_idx", "value_coef", "key_buffer", "value_buffer")
ADAPTIVE_PARTS = ("key_counts", "value_counts")  # where a side's codes adapt (AdaptiveCodeStore): its atom counts
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
            parts = {}
            for side, store in (("key", layer.key_codes), ("value", layer.value_codes)):
                if isinstance(store, AdaptiveCodeStore):
                    parts[f"{side}_idx"], parts[f"{side}_coef"], parts[f"{side}_counts"] = store.runs()
                else:
                    parts[f"{side}_idx"], parts[f"{side}_coef"] = store.view()
            parts.update(key_buffer=layer.key_buffer.view(), value_buffer=layer.value_buffer.view())
            for name, tensor in parts.items():
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
        compressed = [compressed_tokens(tensors, f"layer{i}.") for i, f in enumerate(facts) if f["kind"] == "lexico"]
        cos, sin = tensors["rope.cos"].to(device), tensors["rope.sin"].to(device)
        cache.rope_table.load(cos, sin, max(compressed, default=0))
    for i, (layer, fact) in enumerate(zip(cache.layers, facts)):
        if fact["kind"] == "lexico":
            names = [p for p in LEXICO_PARTS + ADAPTIVE_PARTS if f"layer{i}.{p}" in tensors]
            _import_lexico(layer, {p: tensors[f"layer{i}.{p}"].to(device) for p in names})
        elif fact["kind"] == "dense":
            keys, values = (tensors[f"layer{i}.{p}"].to(device) for p in DENSE_PARTS)
            _import_dense(layer, keys, values, int(fact["seen"]))


def compressed_tokens(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    """Tokens a saved Lexico layer (its tensors named ``prefix`` + part) holds compressed."""
    counts = tensors.get(prefix + "key_counts")
    return (counts if counts is not None else tensors[prefix + "key_idx"]).shape[2]


def _import_lexico(layer: LexicoLayer, parts: dict[str, torch.Tensor]) -> None:
    keys, values = parts["key_buffer"], parts["value_buffer"]
    layer.lazy_initialization(keys[:, :, :0], values[:, :, :0])
    for side, store in (("key", layer.key_codes), ("value", layer.value_codes)):
        if f"{side}_counts" in parts:
            store.append_runs(parts[f"{side}_idx"], parts[f"{side}_coef"], parts[f"{side}_counts"])
        else:
            store.append(parts[f"{side}_idx"], parts[f"{side}_coef"])
    layer.key_buffer.append(keys)
    layer.value_buffer.append(values)
    layer.buffer_start = layer.query_start = layer.compressed_length


def _import_dense(layer, keys: torch.Tensor, values: torch.Tensor, seen: int) -> None:
    layer.lazy_initialization(keys, values)
    layer.keys, layer.values = keys, values
    if hasattr(layer, "cumulative_length"):
        layer.cumulative_length = seen
