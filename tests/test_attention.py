"""Compressed-domain attention equals dense attention on the reconstructed keys/values."""

import dataclasses

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import causal_mask_function, sdpa_mask

from lexico_chat.attention import (
    CompressedKV,
    LostLayerTagError,
    coefs_to_float,
    compressed_attention,
    dispatch,
    lexico_attention_forward,
    pack_indices,
    reference,
)
from lexico_chat.cache import LexicoCache, LexicoLayer
from lexico_chat.config import CacheConfig
from lexico_chat.omp import reconstruct
from lexico_chat.rope import pair_order
from tests.conftest import random_dictionary, rotate_complex


def _codes(b, hkv, t, s, m, n, gen, coef_dtype=torch.float32):
    dk = torch.randn(m, n, generator=gen)
    dv = torch.randn(m, n, generator=gen)
    dk, dv = dk / dk.norm(dim=0), dv / dv.norm(dim=0)
    idx = [torch.rand(b, hkv, t, n, generator=gen).argsort(-1)[..., :s].to(torch.int16) for _ in range(2)]
    coef = [torch.randn(b, hkv, t, s, generator=gen).to(coef_dtype) for _ in range(2)]
    return CompressedKV(idx[0], coef[0], idx[1], coef[1], dk, dv)


def _packed(codes, index_bits):
    """The same codes with 12-bit packed indices (as a cache with N <= 4096 stores them) when asked."""
    if index_bits == 16:
        return codes
    return dataclasses.replace(
        codes,
        key_indices=pack_indices(codes.key_indices),
        value_indices=pack_indices(codes.value_indices),
        index_bits=12,
    )


def _dense_reference(query, keys, values, allowed, scaling, softcap=None):
    """float64 eager attention: query (b,h,q,m), keys/values (b,hkv,T,m), allowed (b|1,1,q,T) bool."""
    groups = query.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(groups, dim=1)
    v = values.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ k.transpose(-1, -2) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)  # (b, q, h, m)


def _causal(q_len, total, window=None):
    q_pos = torch.arange(total - q_len, total)[:, None]
    k_pos = torch.arange(total)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed.view(1, 1, q_len, total)


def _full_kv(codes, key_buf, value_buf):
    keys = reconstruct(codes.key_indices, codes.key_coefs, codes.key_dictionary)
    values = reconstruct(codes.value_indices, codes.value_coefs, codes.value_dictionary)
    return torch.cat([keys, key_buf], 2), torch.cat([values, value_buf], 2)


CASES = [
    # b, heads, kv_heads, q_len, compressed, buffer, m, atoms, s
    (1, 4, 2, 1, 37, 7, 16, 64, 4),  # decode, GQA
    (2, 6, 3, 1, 300, 0, 32, 128, 8),  # buffer empty (buffer=0)
    (1, 2, 2, 5, 50, 12, 16, 64, 16),  # chunk, MHA, values in atom space
    (2, 4, 1, 40, 1100, 45, 16, 64, 4),  # long chunk: tiled values, two tiles
    (1, 9, 3, 17, 129, 30, 64, 256, 8),  # the default model's head layout
]


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
    ),
]


def _on(codes, device):
    def move(value):
        if value is None or isinstance(value, int):
            return value
        return tuple(v.to(device) for v in value) if isinstance(value, tuple) else value.to(device)

    return CompressedKV(*(move(getattr(codes, f.name)) for f in dataclasses.fields(codes)))


@pytest.mark.parametrize("key_pairs", [False, True])
@pytest.mark.parametrize("index_bits", [16, 12])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,heads,hkv,q_len,tc,tb,m,n,s", CASES)
def test_pre_rope_codes_match_dense_on_rotated_reconstruction(
    b, heads, hkv, q_len, tc, tb, m, n, s, device, index_bits, key_pairs, monkeypatch
):
    """Pre-RoPE key codes: attention rotates each rebuilt key by its own position's angles, from atoms in the
    model's coordinate order or, as a layer holds them, in rotation-pair order."""
    monkeypatch.setattr(reference, "TILE_TOKENS", 32)  # several key tiles
    gen = torch.Generator().manual_seed(tc + tb + q_len + 1)
    codes = _codes(b, hkv, tc, s, m, n, gen)
    angles = torch.rand(b, 1, tc, m // 2, generator=gen, dtype=torch.float64) * 6.3
    rope = (angles[:, 0].cos().float(), angles[:, 0].sin().float())
    codes = dataclasses.replace(codes, key_rope=rope)
    query = torch.randn(b, heads, q_len, m, generator=gen)
    key_buf, value_buf = torch.randn(b, hkv, tb, m, generator=gen), torch.randn(b, hkv, tb, m, generator=gen)
    stored = _packed(codes, index_bits)
    if key_pairs:  # the same atoms, rows reordered as LexicoLayer stores them
        held = codes.key_dictionary[pair_order(m)].t().contiguous().t()
        stored = dataclasses.replace(stored, key_dictionary=held, key_pairs=True)
    stored = _on(stored, device)
    out = compressed_attention(
        query.to(device), key_buf.to(device), value_buf.to(device), stored, None, scaling=m**-0.5
    )
    keys, values = _full_kv(codes, key_buf, value_buf)
    keys = torch.cat([rotate_complex(keys[:, :, :tc], angles), keys[:, :, tc:].double()], 2)
    ref = _dense_reference(query, keys, values, _causal(q_len, tc + tb), m**-0.5)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("b,heads,hkv,q_len,tc,tb,m,n,s", CASES)
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("index_bits", [16, 12])
def test_matches_dense_on_reconstruction(b, heads, hkv, q_len, tc, tb, m, n, s, softcap, index_bits, device):
    gen = torch.Generator().manual_seed(tc + tb + q_len)
    codes = _codes(b, hkv, tc, s, m, n, gen)
    query = torch.randn(b, heads, q_len, m, generator=gen)
    key_buf, value_buf = torch.randn(b, hkv, tb, m, generator=gen), torch.randn(b, hkv, tb, m, generator=gen)
    out = compressed_attention(
        query.to(device),
        key_buf.to(device),
        value_buf.to(device),
        _on(_packed(codes, index_bits), device),
        None,
        scaling=m**-0.5,
        softcap=softcap,
    )
    keys, values = _full_kv(codes, key_buf, value_buf)
    ref = _dense_reference(query, keys, values, _causal(q_len, tc + tb), m**-0.5, softcap)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q_len", [1, 9])
@pytest.mark.parametrize("pre_rope", [False, True])
def test_keys_and_values_of_different_sparsity(q_len, pre_rope):
    """Key codes of 3 atoms and value codes of 7 (12-bit packed) give the dense result on the reconstruction."""
    gen = torch.Generator().manual_seed(11)
    keys, values = _codes(1, 2, 90, 3, 16, 64, gen), _codes(1, 2, 90, 7, 16, 64, gen)
    codes = dataclasses.replace(keys, value_indices=values.value_indices, value_coefs=values.value_coefs)
    angles = torch.rand(1, 1, 90, 8, generator=gen, dtype=torch.float64) * 6.3
    if pre_rope:
        codes = dataclasses.replace(codes, key_rope=(angles[:, 0].cos().float(), angles[:, 0].sin().float()))
    query = torch.randn(1, 4, q_len, 16, generator=gen)
    key_buf, value_buf = torch.randn(1, 2, 10, 16, generator=gen), torch.randn(1, 2, 10, 16, generator=gen)
    out = compressed_attention(query, key_buf, value_buf, _packed(codes, 12), None, scaling=0.25)
    full_keys, full_values = _full_kv(codes, key_buf, value_buf)
    if pre_rope:
        full_keys = torch.cat([rotate_complex(full_keys[:, :, :90], angles), full_keys[:, :, 90:].double()], 2)
    ref = _dense_reference(query, full_keys, full_values, _causal(q_len, 100), 0.25)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    assert not dispatch.decode_eligible(query[:, :, :1], key_buf, codes, None, None)  # one-sparsity kernels


@pytest.mark.parametrize("sparse_rows", [0, 10_000])
def test_both_orders_and_blocks_agree(monkeypatch, sparse_rows):
    """Atom-space (scatter) and tiled values, split into many query blocks, give the dense result."""
    monkeypatch.setattr(reference, "VALUES_SPARSE_MAX_ROWS", sparse_rows)
    monkeypatch.setattr(reference, "BLOCK_ELEMENTS", 4096)
    monkeypatch.setattr(reference, "TILE_TOKENS", 64)
    gen = torch.Generator().manual_seed(3)
    codes = _codes(1, 2, 150, 4, 16, 64, gen)
    query = torch.randn(1, 4, 9, 16, generator=gen)
    key_buf, value_buf = torch.randn(1, 2, 20, 16, generator=gen), torch.randn(1, 2, 20, 16, generator=gen)
    out = compressed_attention(query, key_buf, value_buf, codes, None, scaling=0.3)
    keys, values = _full_kv(codes, key_buf, value_buf)
    torch.testing.assert_close(
        out.double(), _dense_reference(query, keys, values, _causal(9, 170), 0.3), rtol=1e-5, atol=1e-6
    )


def test_transformers_masks_padding_and_sliding_window():
    """Bool masks from transformers (left padding, sliding window) and additive float masks are honoured."""
    gen = torch.Generator().manual_seed(5)
    b, heads, hkv, q_len, tc, tb, m = 2, 4, 2, 6, 40, 10, 16
    codes = _codes(b, hkv, tc, 4, m, 64, gen)
    query = torch.randn(b, heads, q_len, m, generator=gen)
    key_buf, value_buf = torch.randn(b, hkv, tb, m, generator=gen), torch.randn(b, hkv, tb, m, generator=gen)
    padding = torch.ones(b, tc + tb, dtype=torch.bool)
    padding[1, :13] = False  # row 1 is left-padded by 13 tokens (all in the compressed part)
    window = 20
    mask = sdpa_mask(
        batch_size=b,
        q_length=q_len,
        kv_length=tc + tb,
        q_offset=tc + tb - q_len,
        mask_function=lambda bi, hi, qi, ki: causal_mask_function(bi, hi, qi, ki) & (qi - ki < window),
        attention_mask=padding,
        allow_is_causal_skip=False,
    )
    keys, values = _full_kv(codes, key_buf, value_buf)
    ref = _dense_reference(query, keys, values, mask, 0.25)
    out = compressed_attention(query, key_buf, value_buf, codes, mask, scaling=0.25)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    additive = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    out_float = compressed_attention(query, key_buf, value_buf, codes, additive, scaling=0.25)
    torch.testing.assert_close(out_float.double(), ref, rtol=1e-5, atol=1e-6)
    out_window = compressed_attention(query, key_buf, value_buf, codes, None, scaling=0.25, sliding_window=window)
    ref_window = _dense_reference(query, keys, values, _causal(q_len, tc + tb, window), 0.25)
    torch.testing.assert_close(out_window.double(), ref_window, rtol=1e-5, atol=1e-6)


def test_fp8_decoding_is_exact_for_every_value():
    every = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    expected = every.float()
    finite = ~torch.isnan(expected)
    assert torch.equal(coefs_to_float(every)[finite], expected[finite])


def test_fp8_codes_read_as_stored():
    """Coefficients stored as float8 are attended exactly as their fp32 values."""
    gen = torch.Generator().manual_seed(9)
    codes = _codes(1, 1, 64, 4, 16, 32, gen, coef_dtype=torch.float8_e4m3fn)
    query = torch.randn(1, 3, 1, 16, generator=gen)
    key_buf, value_buf = torch.randn(1, 1, 5, 16, generator=gen), torch.randn(1, 1, 5, 16, generator=gen)
    out = compressed_attention(query, key_buf, value_buf, codes, None, scaling=0.25)
    keys, values = _full_kv(codes, key_buf, value_buf)
    torch.testing.assert_close(
        out.double(), _dense_reference(query, keys, values, _causal(1, 69), 0.25), rtol=1e-5, atol=1e-6
    )


class _Module(torch.nn.Module):
    num_key_value_groups = 2
    is_causal = True


@pytest.mark.parametrize("q_len", [1, 7])
def test_untagged_keys_are_exactly_sdpa(q_len):
    """Without compressed tokens the "lexico" function returns sdpa's output bit for bit."""
    gen = torch.Generator().manual_seed(q_len)
    query = torch.randn(1, 4, q_len, 16, generator=gen)
    key, value = torch.randn(1, 2, 12, 16, generator=gen), torch.randn(1, 2, 12, 16, generator=gen)
    module = _Module()
    expected, _ = sdpa_attention_forward(module, query, key, value, None, scaling=0.25)
    got, _ = lexico_attention_forward(module, query, key, value, None, scaling=0.25)
    assert torch.equal(got, expected)
    capped, _ = lexico_attention_forward(module, query, key, value, None, scaling=0.25, softcap=3.0)
    ref = _dense_reference(query, key, value, _causal(q_len, 12), 0.25, softcap=3.0)
    torch.testing.assert_close(capped.double(), ref, rtol=1e-5, atol=1e-6)


def test_untagged_keys_with_a_mask_of_their_length_are_exactly_sdpa():
    """An explicit mask covering exactly the keys (DynamicCache with padding, sliding layers) still goes to sdpa."""
    gen = torch.Generator().manual_seed(11)
    query = torch.randn(2, 4, 3, 16, generator=gen)
    key, value = torch.randn(2, 2, 12, 16, generator=gen), torch.randn(2, 2, 12, 16, generator=gen)
    mask = _causal(3, 12).expand(2, 1, 3, 12).clone()
    mask[1, ..., :4] = False  # row 1 left-padded
    module = _Module()
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    got, _ = lexico_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert torch.equal(got, expected)


def test_untagged_keys_shorter_than_the_mask_are_refused():
    """Keys without the layer tag that the mask says are not all the keys: tokens went missing, no sdpa."""
    gen = torch.Generator().manual_seed(12)
    query = torch.randn(1, 4, 3, 16, generator=gen)
    key, value = torch.randn(1, 2, 5, 16, generator=gen), torch.randn(1, 2, 5, 16, generator=gen)
    with pytest.raises(LostLayerTagError, match="mask spans 20 keys but 5 untagged keys"):
        lexico_attention_forward(_Module(), query, key, value, _causal(3, 20), scaling=0.25)


def _filled_cache(model):
    """A LexicoCache on ``model`` after 16 tokens (one window of 4 compressed per Lexico layer)."""
    cache = LexicoCache.from_model(model, random_dictionary(model), CacheConfig(sparsity=4, buffer=8, window=4))
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        model(ids, past_key_values=cache)
    assert all(layer.compressed_length == 4 for layer in cache.lexico_layers)
    return cache


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_decode_with_keys_that_lost_the_tag_raises(tiny_model, arch, monkeypatch):
    """A decode step (no mask) whose key tensor was replaced after the cache update: the values' tag tells."""
    model = tiny_model(arch)
    cache = _filled_cache(model)
    update = LexicoLayer.update

    def untagged_keys(self, key_states, value_states, *args, **kwargs):
        keys, values = update(self, key_states, value_states, *args, **kwargs)
        return keys.clone(), values  # a new key tensor: the layer tag is gone

    monkeypatch.setattr(LexicoLayer, "update", untagged_keys)
    with torch.inference_mode(), pytest.raises(LostLayerTagError, match="keys .* do not"):
        model(torch.tensor([[5]]), past_key_values=cache)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_chunk_with_keys_and_values_that_lost_the_tag_raises(tiny_model, arch, monkeypatch):
    """A prefill chunk after compression whose keys and values were both replaced: the mask's length tells
    (Gemma 3's sliding layers, whose masks match their keys, keep running through sdpa)."""
    model = tiny_model(arch)
    cache = _filled_cache(model)
    update = LexicoCache.update

    def untagged(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = update(self, key_states, value_states, layer_idx, *args, **kwargs)
        return keys.clone(), values.clone()

    monkeypatch.setattr(LexicoCache, "update", untagged)
    with torch.inference_mode(), pytest.raises(LostLayerTagError, match="mask spans 21 keys but 13 untagged"):
        model(torch.arange(5).view(1, 5), past_key_values=cache)


def test_decode_eligible_is_the_one_triton_predicate(monkeypatch):
    """With Triton enabled (forced here) the decode kernels take one query token of a supported dtype over
    codes of either key space, with a one-row mask spanning every key and no narrower sliding window; nothing
    else."""
    monkeypatch.setattr(dispatch, "triton_enabled", lambda tensor: True)
    gen = torch.Generator().manual_seed(13)
    codes = _codes(2, 2, 30, 4, 16, 64, gen)
    query, key = torch.randn(2, 4, 1, 16, generator=gen), torch.randn(2, 2, 6, 16, generator=gen)
    row_mask = torch.ones(2, 1, 1, 36, dtype=torch.bool)
    assert dispatch.decode_eligible(query, key, codes, None, None)
    assert dispatch.decode_eligible(query, key, codes, row_mask, 36)
    assert dispatch.decode_eligible(query, key, None, row_mask[..., :6], None)  # buffer only
    rope = dataclasses.replace(codes, key_rope=(torch.ones(2, 30, 8), torch.zeros(2, 30, 8)))
    assert dispatch.decode_eligible(query, key, rope, None, None)  # pre-RoPE codes: the kernels rotate
    declined = [
        (torch.randn(2, 4, 2, 16, generator=gen), key, codes, None, None),  # two query tokens
        (query.double(), key, codes, None, None),  # float64
        (torch.randn(2, 3, 1, 16, generator=gen), key, codes, None, None),  # heads not a multiple of kv_heads
        (query, key[:, :, :0], None, None, None),  # no keys
        (query, key, codes, None, 35),  # sliding window narrower than the keys
        (query, key, codes, torch.ones(2, 1, 2, 36, dtype=torch.bool), None),  # two mask rows
        (query, key, codes, row_mask[..., :35], None),  # mask of the wrong length
        (query, key, codes, row_mask[:, 0], None),  # 3-d mask
    ]
    for args in declined:
        assert not dispatch.decode_eligible(*args)
    monkeypatch.setattr(dispatch, "triton_enabled", lambda tensor: False)
    assert not dispatch.decode_eligible(query, key, codes, None, None)  # CPU, no Triton, or LEXICO_TRITON=0
