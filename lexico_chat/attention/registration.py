"""The "lexico" attention implementation, registered through transformers' ``AttentionInterface``.

How the attention finds the compressed store: attention functions receive the module, q, k, v and
the mask, but not the cache. A Lexico cache layer returns its buffer keys (and ``LexicoCache`` its
values) with the layer attached as an attribute (``LAYER_TAG``); the model hands those very tensors to
the attention function, which reads the layer's compressed codes from them by duck typing
(``layer.compressed_length``, ``layer.compressed()``). Keys without the tag (a ``DynamicCache``,
sliding-window layers, no cache) and layers with nothing compressed yet go to the stock ``sdpa`` function
(or to eager math when ``softcap`` is set, which sdpa refuses), so the results are exactly those of the
default implementation until the first window is compressed.

A lost tag must not silently drop the compressed tokens, so keys without it are refused
(``LostLayerTagError``) when their values still carry it, or when the mask spans more keys than arrived
(every transformers cache layer returns as many keys as its mask covers; only a Lexico layer holds more
tokens than its key tensor). Decode steps without padding get no mask from transformers, so there a key
and value tensor both replaced on the way are not detectable.

Masks: "lexico" is registered in ``AttentionMaskInterface`` with ``sdpa_mask``, and the Lexico layer
reports mask sizes spanning all its tokens (compressed first), so the mask transformers builds —
causal, padding, sliding window — covers compressed and buffer keys alike. When transformers skips
the mask (plain causal, no padding) the causal structure is rebuilt from positions.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lexico_chat.attention.codes import LAYER_TAG
from lexico_chat.attention.dispatch import compressed_attention
from lexico_chat.attention.overlap import overlap_mask

__all__ = [
    "ATTENTION_NAME",
    "LostLayerTagError",
    "lexico_attention_forward",
    "register_lexico_attention",
    "use_lexico_attention",
]

ATTENTION_NAME = "lexico"


class LostLayerTagError(RuntimeError):
    """Keys reached the "lexico" attention without the tag (``LAYER_TAG``) of the cache layer holding the rest
    of their tokens: something between the cache's ``update`` and the attention replaced the key tensor.
    An internal error (running sdpa on the buffer alone would drop every compressed token)."""


def lexico_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention over a Lexico layer's compressed tokens and buffer (transformers' interface).

    Parameters
    ----------
    query : (b, heads, q_len, m); key, value : (b, kv_heads, Tb, m) as returned by the cache.
    attention_mask : None, or (b, 1, q_len, Tc + Tb) bool / additive float.
    scaling : q·k multiplier (default m ** -0.5); softcap, sliding_window : as the model passes them.

    Returns
    -------
    (b, q_len, heads, m) attention output in ``query.dtype``, and None (no attention weights).

    Raises
    ------
    LostLayerTagError : the keys lost the layer tag on the way from the cache (see the module docstring).
    """
    layer = _tagged_layer(key, value, attention_mask)
    if layer is None or layer.compressed_length == 0:
        if softcap is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        compressed = None
    else:
        compressed = layer.compressed()
        limits = layer.query_limits(query.shape[2])  # None unless some tokens are held both ways
        if limits is not None:
            attention_mask = overlap_mask(
                attention_mask, limits.to(query.device), layer.compressed_length, layer.buffer_start, key.shape[2]
            )
    if dropout and module.training:
        raise ValueError(f"lexico attention is for inference; got dropout={dropout} with the module in training mode")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = compressed_attention(
        query, key, value, compressed, attention_mask, scaling=scale, softcap=softcap, sliding_window=sliding_window
    )
    if layer is not None:
        layer.settle()  # the call's attention has run: drop buffered copies of compressed tokens
    return out, None


def _tagged_layer(key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None):
    """The cache layer tagged on ``key`` (b, kv_heads, Tb, m), None for untagged keys that hold every token;
    raises ``LostLayerTagError`` where the tag was evidently lost (shape checks only, no host sync)."""
    layer = getattr(key, LAYER_TAG, None)
    if layer is not None:
        return layer
    if getattr(value, LAYER_TAG, None) is not None:
        raise LostLayerTagError(
            f"the values carry a Lexico cache layer's {LAYER_TAG!r} tag but the keys {tuple(key.shape)} do not: the "
            "key tensor was replaced between the cache update and the attention; its compressed tokens would be lost"
        )
    if attention_mask is not None and attention_mask.ndim >= 2 and attention_mask.shape[-1] > key.shape[-2]:
        raise LostLayerTagError(
            f"the attention mask spans {attention_mask.shape[-1]} keys but {key.shape[-2]} untagged keys arrived: the "
            f"{LAYER_TAG!r} tag of the Lexico cache layer holding the other tokens was lost on the way to the attention"
        )
    return None


def register_lexico_attention() -> None:
    """Register the "lexico" attention and its mask builder (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, lexico_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def use_lexico_attention(model: torch.nn.Module) -> None:
    """Switch ``model`` (a transformers ``PreTrainedModel``) to the "lexico" attention."""
    register_lexico_attention()
    if getattr(model.config, "_attn_implementation", None) != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)
