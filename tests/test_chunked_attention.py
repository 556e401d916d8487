"""The CPU chunk path (flash attention per tile, merged by log-sum-exp) equals the PyTorch reference, and the
dispatch sends prefill-sized calls to it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lexico_chat.attention import compressed_attention, reference
from lexico_chat.attention.chunked import chunk_attention, chunk_eligible
from lexico_chat.rope import pair_order
from tests.test_attention import _codes, _packed

_NEG = torch.finfo(torch.float32).min

CASES = [
    # b, heads, kv_heads, q_len, compressed, buffer, m, atoms, s
    (1, 9, 3, 17, 129, 30, 64, 256, 8),  # the default model's head layout
    (2, 4, 1, 40, 100, 45, 16, 64, 4),  # GQA 4, batch 2, several tiles
    (1, 2, 2, 12, 70, 0, 16, 64, 5),  # MHA, no buffer, odd sparsity
]


def _inputs(b, heads, hkv, q_len, tc, tb, m, n, s, key_space, index_bits, coef_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed + tc + q_len)
    codes = _codes(b, hkv, tc, s, m, n, gen, coef_dtype)
    if key_space != "post_rope":
        angles = torch.rand(b, tc, m // 2, generator=gen) * 6.3
        codes = dataclasses.replace(codes, key_rope=(angles.cos().half(), angles.sin().half()))
    if key_space == "pre_rope_pairs":  # as a layer holds them: atoms in rotation-pair order
        held = codes.key_dictionary[pair_order(m)].t().contiguous().t()
        codes = dataclasses.replace(codes, key_dictionary=held, key_pairs=True)
    query = torch.randn(b, heads, q_len, m, generator=gen)
    key, value = torch.randn(b, hkv, tb, m, generator=gen), torch.randn(b, hkv, tb, m, generator=gen)
    return query, key, value, _packed(codes, index_bits)


def _padding_mask(b, q_len, total):
    """Causal over absolute positions, with the first keys of batch row 1 padded out (bool, True = attend)."""
    allowed = (torch.arange(total)[None, :] <= torch.arange(total - q_len, total)[:, None]).expand(b, 1, q_len, total)
    allowed = allowed.clone()
    if b > 1:
        allowed[1, :, :, :7] = False
    return allowed


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope", "pre_rope_pairs"])
@pytest.mark.parametrize("mask", ["causal", "padding", "additive", "window"])
@pytest.mark.parametrize("index_bits,coef_dtype", [(16, torch.float32), (12, torch.float8_e4m3fn)])
def test_chunk_path_equals_reference(case, key_space, mask, index_bits, coef_dtype, monkeypatch):
    monkeypatch.setattr(reference, "TILE_TOKENS", 32)  # several tiles, merged by their log-sum-exp
    b, heads, hkv, q_len, tc, tb, m, n, s = case
    query, key, value, codes = _inputs(*case, key_space, index_bits, coef_dtype)
    total = tc + tb
    window, attention_mask = None, None
    if mask == "padding":
        attention_mask = _padding_mask(b, q_len, total)
    elif mask == "additive":
        attention_mask = torch.where(_padding_mask(b, q_len, total), 0.0, _NEG)
    elif mask == "window":
        window = total // 3  # the first queries see no compressed token of some tiles at all
    assert chunk_eligible(query, key, codes, attention_mask, None)
    got = chunk_attention(query, key, value, codes, attention_mask, scaling=m**-0.5, sliding_window=window)
    ref = reference.reference_attention(
        query, key, value, codes, attention_mask, scaling=m**-0.5, sliding_window=window
    )
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    via_dispatch = compressed_attention(
        query, key, value, codes, attention_mask, scaling=m**-0.5, sliding_window=window
    )
    torch.testing.assert_close(via_dispatch, got, rtol=0, atol=0)


def test_chunk_path_keeps_the_query_dtype():
    query, key, value, codes = _inputs(*CASES[0], "pre_rope_pairs", 12, torch.float8_e4m3fn)
    got = chunk_attention(query.half(), key.half(), value.half(), codes, None, scaling=0.125)
    ref = reference.reference_attention(query.half(), key.half(), value.half(), codes, None, scaling=0.125)
    assert got.dtype == torch.float16 and got.shape == (1, 17, 9, 64)
    torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)


def test_eligibility():
    query, key, value, codes = _inputs(*CASES[0], "pre_rope_pairs", 12, torch.float32)
    assert chunk_eligible(query, key, codes, None, None)
    assert not chunk_eligible(query[:, :, :2], key, codes, None, None)  # 3 rows per KV head x 2: the decode path
    assert not chunk_eligible(query, key, codes, None, 30.0)  # softcap: the fused kernel has none
    assert not chunk_eligible(query, key, None, None, None)  # nothing compressed: plain attention
    per_head = torch.ones(1, 9, 17, 159, dtype=torch.bool)
    assert not chunk_eligible(query, key, codes, per_head, None)  # a mask per head
