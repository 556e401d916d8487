"""Collecting keys (post- or pre-RoPE, see ``lexico_chat.rope``) and values from forward passes over a corpus."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from lexico_chat.errors import LexicoError
from lexico_chat.rope import probe_for, unrotate

__all__ = ["KVSample", "collect_kv", "token_windows"]

logger = logging.getLogger(__name__)


@dataclass
class KVSample:
    """Sampled vectors of every layer.

    keys, values : (layers, V, head_dim) float16 training vectors.
    heldout_keys, heldout_values : (layers, H, head_dim) float16 vectors from held-out windows.
    tokens : tokens read from the corpus.
    """

    keys: torch.Tensor
    values: torch.Tensor
    heldout_keys: torch.Tensor
    heldout_values: torch.Tensor
    tokens: int


def token_windows(tokenizer, texts: list[str], window: int) -> list[torch.Tensor]:
    """Each document tokenized on its own and cut into windows of at most ``window`` tokens (1-D int64)."""
    windows = []
    for text in texts:
        ids = torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long)
        windows.extend(ids[i : i + window] for i in range(0, len(ids), window) if len(ids[i : i + window]) >= 16)
    if not windows:
        raise LexicoError("the corpus holds no text to train on (every file is shorter than 16 tokens)")
    return windows


@torch.inference_mode()
def window_kv(model, ids: torch.Tensor, key_space: str = "post_rope") -> list[tuple[torch.Tensor, torch.Tensor]]:
    # ids: (T,) -> per layer (keys (H*T, m), values (H*T, m)); keys as the cache receives them (post-RoPE)
    # or un-rotated by the very rotation the model applied (pre-RoPE)
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    probe = probe_for(model) if key_space == "pre_rope" else None
    model(input_ids=ids.unsqueeze(0).to(device), past_key_values=cache, use_cache=True)
    layer_types = getattr(model.config.get_text_config(decoder=True), "layer_types", None)
    out = []
    for i, layer in enumerate(cache.layers):
        k, v = layer.keys[0], layer.values[0]  # (H, T', m); sliding layers keep the last T' tokens
        if probe is not None:
            cos, sin = probe.latest(layer_types[i] if layer_types else None)
            k = unrotate(k.float(), cos[0, -k.shape[1] :], sin[0, -k.shape[1] :])
        out.append((k.reshape(-1, k.shape[-1]).float().cpu(), v.reshape(-1, v.shape[-1]).float().cpu()))
    return out


def collect_kv(
    model,
    windows: list[torch.Tensor],
    *,
    max_vectors: int,
    heldout_every: int = 10,
    max_heldout: int = 8192,
    seed: int = 0,
    key_space: str = "post_rope",
    progress: Callable[[int], None] | None = None,
) -> KVSample:
    """Run the model over ``windows`` and keep a uniform random sample of K/V vectors per layer.

    Every ``heldout_every``-th window is held out (its vectors are never trained on). At most
    ``max_vectors`` training and ``max_heldout`` held-out vectors are kept per layer, so memory is
    bounded whatever the corpus size.
    """
    gen = torch.Generator().manual_seed(seed)
    kv_heads = _kv_heads(model)
    held_out = [_is_held(i, len(windows), heldout_every) for i in range(len(windows))]
    train_tokens = sum(len(w) for w, h in zip(windows, held_out) if not h)
    held_tokens = sum(len(w) for w in windows) - train_tokens
    p_train = min(1.0, 1.05 * max_vectors / max(1, train_tokens * kv_heads))
    p_held = min(1.0, 1.05 * max_heldout / max(1, held_tokens * kv_heads))
    train: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    held: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for i, ids in enumerate(windows):
        is_held = held_out[i]
        per_layer = window_kv(model, ids, key_space)
        keep = torch.rand(per_layer[0][0].shape[0], generator=gen) < (p_held if is_held else p_train)
        (held if is_held else train).append([(k[keep].half(), v[keep].half()) for k, v in per_layer])
        if progress:
            progress(len(ids))
    keys, values = _stack(train, max_vectors)
    held_keys, held_values = _stack(held, max_heldout)
    logger.info("collected %d training and %d held-out vectors per layer", keys.shape[1], held_keys.shape[1])
    return KVSample(keys, values, held_keys, held_values, sum(len(w) for w in windows))


def _is_held(i: int, count: int, every: int) -> bool:
    """Every ``every``-th window is held out; a corpus of fewer windows holds out its last one."""
    return i % every == every - 1 or (count < every and i == count - 1 and count > 1)


def _kv_heads(model) -> int:
    from lexico_chat.models import model_dims

    return model_dims(model.config).num_kv_heads


def _stack(chunks: list[list[tuple[torch.Tensor, torch.Tensor]]], cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not chunks:
        raise LexicoError("the corpus is too short to hold out a part for evaluation: give more text")
    layers = len(chunks[0])
    keys = torch.stack([torch.cat([c[layer][0] for c in chunks])[:cap] for layer in range(layers)])
    values = torch.stack([torch.cat([c[layer][1] for c in chunks])[:cap] for layer in range(layers)])
    return keys, values
