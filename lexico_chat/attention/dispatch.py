"""``compressed_attention``: the fused Triton decode kernels where they apply, the CPU chunk path for many
queries (``chunked``: flash attention per tile), else the PyTorch reference (whose hot pieces run in the native
CPU kernels of ``lexico_chat.native`` where it can build them: CPU decode goes there).

One predicate per path decides. ``decode_eligible`` reads ``lexico_chat.accel.triton_enabled`` (CUDA, Triton
importable, not switched off by ``LEXICO_TRITON=0``) and the shapes the kernels handle: one query token,
key codes of either key space, a mask that is None or one key row per batch row, no sliding window narrower than
the keys. Triton is optional, so ``lexico_chat.attention.triton_decode`` is imported on the first call
that qualifies. ``chunked.chunk_eligible``: CPU tensors, more query rows per KV head than the decode path
scatters, no softcap, one mask for every head.
"""

from __future__ import annotations

import torch

from lexico_chat.accel import triton_enabled
from lexico_chat.attention.chunked import chunk_attention, chunk_eligible
from lexico_chat.attention.codes import CompressedKV
from lexico_chat.attention.reference import reference_attention

__all__ = ["DECODE_DTYPES", "compressed_attention", "decode_eligible"]

DECODE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # query dtypes the decode kernels take


def decode_eligible(
    query: torch.Tensor,
    key: torch.Tensor,
    compressed: CompressedKV | None,
    attention_mask: torch.Tensor | None,
    sliding_window: int | None,
) -> bool:
    """Whether ``compressed_attention`` runs the Triton decode kernels on these inputs.

    Parameters
    ----------
    query : (b, heads, q_len, m); key : (b, kv_heads, Tb, m) buffer keys.
    compressed, attention_mask, sliding_window : as ``compressed_attention``.

    Returns
    -------
    True for CUDA tensors with Triton enabled, q_len == 1, a query dtype in ``DECODE_DTYPES``, heads a
    multiple of kv_heads, codes (post- or pre-RoPE, or none) with one sparsity for keys and
    values, at least one key, a mask None or (b or 1, 1, 1, Tc + Tb),
    and ``sliding_window`` None or >= Tc + Tb.
    """
    if query.shape[2] != 1 or query.dtype not in DECODE_DTYPES or query.shape[1] % key.shape[1]:
        return False
    if compressed is not None and compressed.key_coefs.shape[-1] != compressed.value_coefs.shape[-1]:
        return False  # the kernels take one sparsity for keys and values
    total = key.shape[2] + (compressed.length if compressed is not None else 0)
    if total == 0 or (sliding_window is not None and sliding_window < total):
        return False
    if attention_mask is not None and (attention_mask.ndim != 4 or tuple(attention_mask.shape[1:]) != (1, 1, total)):
        return False
    return triton_enabled(query)


def compressed_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed: CompressedKV | None,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    softcap: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Attention of ``query`` over compressed tokens followed by buffer tokens.

    Parameters
    ----------
    query : (b, heads, q_len, m) any float dtype; head h reads KV head h // (heads // kv_heads).
    key, value : (b, kv_heads, Tb, m) buffer tokens (the most recent ones).
    compressed : codes of the Tc older tokens, or None (plain eager attention on the buffer).
    attention_mask : None (causal), or (b, 1 or heads, q_len, Tc + Tb) bool (True = attend) / additive
        float; its key axis has the compressed tokens first (see ``reference.attention_bias``).
    scaling : multiplier of q·k; softcap : optional ``tanh(x / c) * c`` of the scaled scores.
    sliding_window : keys at distance >= sliding_window are masked too (with ``attention_mask=None``).

    Returns
    -------
    (b, q_len, heads, m) in ``query.dtype``.
    """
    if decode_eligible(query, key, compressed, attention_mask, sliding_window):
        from lexico_chat.attention.triton_decode import decode_attention  # optional dependency, CUDA work only

        return decode_attention(query, key, value, compressed, attention_mask, scaling=scaling, softcap=softcap)
    if chunk_eligible(query, key, compressed, attention_mask, softcap):  # many queries on the CPU: fused per tile
        return chunk_attention(
            query, key, value, compressed, attention_mask, scaling=scaling, sliding_window=sliding_window
        )
    return reference_attention(
        query, key, value, compressed, attention_mask, scaling=scaling, softcap=softcap, sliding_window=sliding_window
    )
