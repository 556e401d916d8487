"""Whether a checked session file (``session_file.read_session_file``) fits the session that would load it.

``check_fits(saved, session, cache)``: the model, the cache settings and dictionary, each layer's kind
(compressed, full, sliding window), batch 1, the KV heads, head_dim and sparsity (or, for adaptive codes, the
atoms per window) of every tensor, the storage dtypes the session's cache uses, the compression schedule, token
ids inside the vocabulary, the context length. Every defect raises one ``LexicoError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

from lexico_chat.cache.layer import LexicoLayer
from lexico_chat.dictionary import model_slug
from lexico_chat.engine.cache_state import compressed_tokens
from lexico_chat.engine.session_file import Check, SavedSession, session_settings
from lexico_chat.errors import LexicoError

__all__ = ["check_fits"]


def check_fits(saved: SavedSession, session, cache) -> None:
    """Refuse (LexicoError) ``saved`` unless it can fill ``cache``, a fresh cache of ``session`` (a ChatSession)."""
    path, model_id = saved.path, session.loaded.model_id
    if model_slug(saved.model_id) != model_slug(model_id):
        raise LexicoError(f"{path} was saved with model {saved.model_id[:200]}, not {model_id}")
    _check_same_settings(path, saved.settings, session_settings(session))
    check, length = Check(path), saved.length
    layers = len(cache.layers)
    check.that(len(saved.layers) == layers, f"it has {len(saved.layers)} layers, this model {layers}")
    for i, (fact, layer) in enumerate(zip(saved.layers, cache.layers)):
        if fact["kind"] != "empty":
            _fit_layer(check, i, fact["kind"], layer, saved, session)
    table = getattr(cache, "rope_table", None)
    rope = table is not None and length > 0
    check.that(("rope.cos" in saved.tensors) == rope, "the file and this cache disagree on pre-RoPE key coding")
    if rope:
        check.shape(saved.tensors["rope.cos"], "rope.cos", (1, length, session.loaded.dims.head_dim // 2))
    vocab = session.loaded.model.get_input_embeddings().num_embeddings
    highest = int(saved.tensors["token_ids"].max()) if length else 0
    check.that(highest < vocab, f"token_ids hold {highest}, beyond the vocabulary of {vocab}")
    limit = session.max_positions
    check.that(length <= limit, f"it holds {length} tokens, the model's context is {limit}")


def _fit_layer(check: Check, i: int, kind: str, layer, saved: SavedSession, session) -> None:
    """Layer ``i`` of the file (``kind`` "lexico" or "dense") against ``layer`` of the fresh cache."""
    compressed = isinstance(layer, LexicoLayer)
    wanted = "lexico" if compressed else "dense"
    check.that(kind == wanted, f"layer {i} is {kind} in the file but {wanted} in this cache")
    t = {name.split(".", 1)[1]: x for name, x in saved.tensors.items() if name.startswith(f"layer{i}.")}
    dims, length = session.loaded.dims, saved.length
    model_dtype = next(session.loaded.model.parameters()).dtype
    if not compressed:
        window = getattr(layer, "sliding_window", None)
        held = length if window is None else min(length, window - 1)
        check.shape(t["keys"], f"layer{i}.keys", (1, dims.num_kv_heads, held, dims.head_dim))
        check.that(t["keys"].dtype == model_dtype, f"layer{i}.keys is {t['keys'].dtype}; the model is {model_dtype}")
        return
    atoms, done = session.dictionary.meta.atoms, compressed_tokens(t, "")
    for name in ("key_idx", "value_idx"):
        high = int(t[name].max()) if t[name].numel() else 0
        check.that(high < atoms, f"layer{i}.{name} holds atom {high}; the dictionary has {atoms}")
    for side, s in (("key", layer.key_sparsity), ("value", layer.value_sparsity)):
        adaptive = layer.adapts(s)
        check.that(
            adaptive == (f"{side}_counts" in t), f"layer {i}: the file and this cache disagree on {side} code length"
        )
        shape = (done // layer.window * layer.window_atoms(s),) if adaptive else (done, s)
        check.shape(t[f"{side}_idx"], f"layer{i}.{side}_idx", (1, dims.num_kv_heads, *shape))
    check.shape(t["key_buffer"], f"layer{i}.key_buffer", (1, dims.num_kv_heads, length - done, dims.head_dim))
    held = layer.buffer_dtype_for(model_dtype)
    check.that(
        t["key_buffer"].dtype == held, f"layer{i}.key_buffer is {t['key_buffer'].dtype}; this cache holds {held}"
    )
    expected = layer.compressed_limit(length - 1)
    check.that(done == expected, f"layer {i} has {done} of {length} tokens compressed, not {expected}")


def _check_same_settings(path: Path, saved: dict, mine: dict) -> None:
    if saved["kind"] != mine["kind"]:
        raise LexicoError(f"{path} holds a {saved['kind']} cache, this session uses a {mine['kind']} cache (--cache)")
    # how later tokens are coded (the selection dtype) does not change what the file holds
    diff = [
        f"{k} {saved.get(k)} (this session: {mine[k]})" for k in mine if saved.get(k) != mine[k] and k != "select_dtype"
    ]
    if diff:
        what = "a different dictionary" if saved["dictionary"] != mine["dictionary"] else "other cache settings"
        raise LexicoError(f"{path} was saved with {what}: " + "; ".join(d[:80] for d in diff))
