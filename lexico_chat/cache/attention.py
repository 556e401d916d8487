"""The "lexico" attention implementation, registered through transformers' ``AttentionInterface``.

How the attention finds the compressed store: attention functions receive the module, q, k, v and
the mask, but not the cache. ``LexicoLayer.update`` returns its buffer keys with the layer attached
as an attribute (``LAYER_TAG``); the model hands that very tensor to the attention function, which
reads the layer's compressed codes from it. Keys without the tag (a ``DynamicCache``, sliding-window
layers, no cache) and layers with nothing compressed yet go to the stock ``sdpa`` function (or to
eager math when ``softcap`` is set, which sdpa refuses), so the results are exactly those of the
default implementation until the first window is compressed.

Masks: "lexico" is registered in ``AttentionMaskInterface`` with ``sdpa_mask``, and ``LexicoLayer``
reports mask sizes spanning all its tokens (compressed first), so the mask transformers builds —
causal, padding, sliding window — covers compressed and buffer keys alike. When transformers skips
the mask (plain causal, no padding) the causal structure is rebuilt from positions.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lexico_chat.cache.kernels import compressed_attention
from lexico_chat.cache.layer import LAYER_TAG

__all__ = ["ATTENTION_NAME", "lexico_attention_forward", "register_lexico_attention", "use_lexico_attention"]

ATTENTION_NAME = "lexico"


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
    """Attention over a ``LexicoLayer``'s compressed tokens and buffer (transformers' interface).

    Parameters
    ----------
    query : (b, heads, q_len, m); key, value : (b, kv_heads, Tb, m) as returned by the cache.
    attention_mask : None, or (b, 1, q_len, Tc + Tb) bool / additive float.
    scaling : q·k multiplier (default m ** -0.5); softcap, sliding_window : as the model passes them.

    Returns
    -------
    (b, q_len, heads, m) attention output in ``query.dtype``, and None (no attention weights).
    """
    layer = getattr(key, LAYER_TAG, None)
    if layer is None or layer.compressed_length == 0:
        if softcap is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        compressed = None
    else:
        compressed = layer.compressed()
    if dropout and module.training:
        raise ValueError(f"lexico attention is for inference; got dropout={dropout} with the module in training mode")
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    out = compressed_attention(
        query, key, value, compressed, attention_mask, scaling=scale, softcap=softcap, sliding_window=sliding_window
    )
    return out, None


def register_lexico_attention() -> None:
    """Register the "lexico" attention and its mask builder (idempotent)."""
    AttentionInterface.register(ATTENTION_NAME, lexico_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def use_lexico_attention(model: torch.nn.Module) -> None:
    """Switch ``model`` (a transformers ``PreTrainedModel``) to the "lexico" attention."""
    register_lexico_attention()
    if getattr(model.config, "_attn_implementation", None) != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)
