"""The many-query path on the CPU (prefill chunks): compressed tokens rebuilt densely a tile at a time, each tile
and the buffer attended by torch's fused flash attention, the partial results merged by their log-sum-exp.

``reference_attention`` scores a chunk of queries with one GEMM per tile too, but then adds the mask, takes the
softmax and slices the probabilities in separate passes over (query rows × keys) fp32 tensors: on 2 CPU cores a
512-query chunk over 2,048 compressed and 640 buffered tokens took about ten times as long as SDPA over the same
number of dense keys. Here each segment (a tile of at most ``reference.TILE_TOKENS`` compressed tokens, then the
buffer) goes through ``aten._scaled_dot_product_flash_attention_for_cpu``, which returns the segment's output
and the log-sum-exp of its scores; with L = logaddexp of every segment's Lᵢ,

    out = Σᵢ exp(Lᵢ − L) · outᵢ

is exactly the softmax over all keys. Working memory stays one tile: rebuilt keys and values of ≤ TILE_TOKENS
tokens, one copy per query head (the fused kernel takes as many KV heads as query heads; ``native.rebuild``
writes them so directly). Pre-RoPE keys
are rebuilt in rotation-pair order and rotated as the reference does; the query and the buffer keys are put in
the same order (dot products do not change). A masked key gets the reference's bias (fp32 min, finite), so a
segment whose keys are all masked for a query has Lᵢ ≈ fp32 min and weight 0 in the merge.

``chunk_eligible`` says where it runs: CPU tensors, query rows per KV head above the decode path's
``VALUES_SPARSE_MAX_ROWS``, no softcap (the fused kernel has none), a mask shared by every head.
"""

from __future__ import annotations

import torch

from lexico_chat.attention.codes import CompressedKV
from lexico_chat.attention.reference import VALUES_SPARSE_MAX_ROWS, attention_bias, dense_tiles, repeat_heads
from lexico_chat.rope import pair_order

__all__ = ["chunk_attention", "chunk_eligible"]

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def chunk_eligible(
    query: torch.Tensor,
    key: torch.Tensor,
    compressed: CompressedKV | None,
    attention_mask: torch.Tensor | None,
    softcap: float | None,
) -> bool:
    """Whether ``chunk_attention`` serves these inputs (see the module docstring); shapes as ``reference_attention``."""
    if compressed is None or not compressed.length or softcap is not None or query.device.type != "cpu":
        return False
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % kv_heads or (heads // kv_heads) * query.shape[2] <= VALUES_SPARSE_MAX_ROWS:
        return False
    return attention_mask is None or (attention_mask.ndim == 4 and attention_mask.shape[1] == 1)


def chunk_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed: CompressedKV,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Attention of ``query`` over compressed tokens followed by buffer tokens, segment by segment (CPU).

    Parameters
    ----------
    query : (b, heads, q_len, m) any float dtype; head h reads KV head h // (heads // kv_heads).
    key, value : (b, kv_heads, Tb, m) buffer tokens.
    compressed : codes of the Tc older tokens (Tc > 0).
    attention_mask : None (causal) or (b, 1, q_len, Tc + Tb) bool / additive float, compressed tokens first.
    scaling : multiplier of q·k; sliding_window : as ``reference.attention_bias``.

    Returns
    -------
    (b, q_len, heads, m) in ``query.dtype``; fp32 arithmetic, equal to ``reference_attention`` to rounding.
    """
    b, heads, q_len, m = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    n_comp = compressed.length
    total = n_comp + key.shape[2]
    bias = attention_bias(attention_mask, q_len, total, kv_heads, groups, sliding_window, query.device)
    bias = None if bias is None else bias.view(bias.shape[0], 1, q_len, total)  # one mask for every head
    q32 = query.to(torch.float32)
    k32 = key.to(torch.float32)
    pairs = compressed.key_rope is not None
    if pairs:  # rebuilt keys come in rotation-pair order: the query and buffer keys follow
        order = pair_order(m, query.device)
        q32, k32 = q32[..., order], k32[..., order]
    q32 = q32.contiguous()
    outs, lses = [], []

    def attend(keys: torch.Tensor, values: torch.Tensor, start: int, stop: int) -> None:
        mask = None if bias is None else bias[..., start:stop]
        out, lse = _flash(q32, keys, values, attn_mask=mask, scale=scaling)
        outs.append(out)
        lses.append(lse)

    key_tiles = dense_tiles(compressed, keys=True, repeat=groups)  # already one copy per query head
    value_tiles = dense_tiles(compressed, keys=False, repeat=groups)
    for (start, keys), (_, values) in zip(key_tiles, value_tiles):
        attend(keys, values, start, start + keys.shape[2])
    if key.shape[2]:
        attend(repeat_heads(k32, groups), repeat_heads(value.to(torch.float32), groups), n_comp, total)
    return _merge(outs, lses).transpose(1, 2).to(query.dtype).contiguous()


def _merge(outs: list[torch.Tensor], lses: list[torch.Tensor]) -> torch.Tensor:
    # per segment (b, heads, q, m) outputs and (b, heads, q) log-sum-exps -> (b, heads, q, m) over all keys
    if len(outs) == 1:
        return outs[0]
    lse = torch.stack(lses)  # (segments, b, heads, q)
    weights = torch.softmax(lse, dim=0).unsqueeze(-1)  # exp(L_i - L)
    merged = outs[0] * weights[0]
    for out, weight in zip(outs[1:], weights[1:]):
        merged.addcmul_(out, weight)
    return merged
