"""Baseline caches: KIVI quantization error and bytes, sink + window eviction against masked dense attention."""

import math

import pytest
import torch

from lexico_chat.baselines import EvictionCache, KiviCache, KiviLayer, SinkWindowLayer
from lexico_chat.baselines.quantize import dequantize, pack, quantize, unpack


def _kv(tokens, seed=0, b=1, h=2, m=16):
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(b, h, tokens, m, generator=gen) * torch.linspace(0.5, 8.0, m)  # outlier channels
    return keys, torch.randn(b, h, tokens, m, generator=gen)


def _feed(layer, keys, values, chunks):
    out, start = None, 0
    for size in chunks:
        out = layer.update(keys[:, :, start : start + size], values[:, :, start : start + size])
        start += size
    return out


def test_pack_layout_and_roundtrip():
    codes = torch.tensor([[1, 2, 3, 0]], dtype=torch.uint8)
    assert pack(codes, 2).tolist() == [[1 + (2 << 2) + (3 << 4)]]
    assert pack(torch.tensor([[5, 12]], dtype=torch.uint8), 4).tolist() == [[5 + (12 << 4)]]
    for bits in (2, 4, 8):
        random = torch.randint(0, 2**bits, (3, 5, 16), dtype=torch.uint8)
        assert pack(random, bits).shape == (3, 5, 16 * bits // 8)
        assert torch.equal(unpack(pack(random, bits), bits), random)
    with pytest.raises(ValueError, match="`bits` must be one of"):
        pack(codes, 3)


@pytest.mark.parametrize("bits", [2, 4])
def test_quantize_error_is_at_most_half_a_step(bits):
    x = torch.randn(64, 32) * 10 + 3
    codes, scale, zero = quantize(x, bits, dim=0)  # one group per column
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    assert scale.shape == zero.shape == (1, 32) and scale.dtype == torch.float16
    error = (dequantize(codes, scale, zero) - x).abs()
    assert bool((error <= scale.float() / 2 * (1 + 1e-5) + 1e-6).all())
    # the step is the column's range over 2^b - 1 levels, up to fp16 rounding
    span = (x.amax(0) - x.amin(0)) / (2**bits - 1)
    torch.testing.assert_close(scale.float()[0], span, rtol=2e-3, atol=0)


def _reference_error_bound(x, group_dims, bits):
    """Half a step of every element's group, groups reduced over ``group_dims`` (independent of the layer)."""
    span = x.amax(group_dims, keepdim=True) - x.amin(group_dims, keepdim=True)
    return (span / (2**bits - 1) / 2 * (1 + 2e-3) + 1e-6).expand_as(x)


@pytest.mark.parametrize("bits", [2, 4])
def test_kivi_layer_groups_keys_per_channel_and_values_per_token(bits):
    keys, values = _kv(100)
    layer = KiviLayer(bits, group=8, value_group=8, residual=10, dtype=torch.float32)
    out_k, out_v = _feed(layer, keys, values, [30, 1, 40, 29])
    assert out_k.shape == keys.shape and out_v.shape == values.shape
    tq = layer.quantized_length
    assert tq % 8 == 0 and 10 <= 100 - tq < 18 and tq == 88
    # residual tokens come back exactly
    assert torch.equal(out_k[:, :, tq:], keys[:, :, tq:]) and torch.equal(out_v[:, :, tq:], values[:, :, tq:])
    # keys: groups of 8 tokens of one channel; values: groups of 8 channels of one token
    k_groups = keys[:, :, :tq].reshape(1, 2, tq // 8, 8, 16)
    k_err = (out_k[:, :, :tq].reshape(k_groups.shape) - k_groups).abs()
    assert bool((k_err <= _reference_error_bound(k_groups, 3, bits)).all())
    v_groups = values[:, :, :tq].reshape(1, 2, tq, 2, 8)
    v_err = (out_v[:, :, :tq].reshape(v_groups.shape) - v_groups).abs()
    assert bool((v_err <= _reference_error_bound(v_groups, 4, bits)).all())


def test_kivi_bytes_are_counted_exactly():
    keys, values = _kv(100)
    layer = KiviLayer(2, group=8, value_group=8, residual=10, dtype=torch.float16)
    _feed(layer, keys, values, [100])
    tq, tr, m, heads = 88, 12, 16, 2
    codes = 2 * tq * m * 2 // 8
    key_params = 2 * (tq // 8) * m * 2  # scale + zero, fp16, per group of 8 tokens per channel
    value_params = 2 * tq * (m // 8) * 2  # scale + zero, fp16, per token per group of 8 channels
    residual = 2 * tr * m * 2
    assert layer.held_bytes() == heads * (codes + key_params + value_params + residual)


def test_four_bits_beat_two_bits():
    keys, values = _kv(96, seed=3)
    errors = {}
    for bits in (2, 4):
        out_k, out_v = _feed(KiviLayer(bits, group=8, residual=0, dtype=torch.float32), keys, values, [96])
        errors[bits] = ((out_k - keys).norm() / keys.norm(), (out_v - values).norm() / values.norm())
    assert errors[4][0] < errors[2][0] / 3 and errors[4][1] < errors[2][1] / 3


def test_kivi_cache_on_a_model(tiny_model):
    model = tiny_model("llama")
    ids = torch.randint(0, 128, (1, 120), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(ids).logits
        errors = {}
        for bits in (2, 4, 8):
            cache = KiviCache(model.config, bits=bits, group=8, value_group=8, residual=16)
            logits = torch.cat([model(ids[:, s : s + 40], past_key_values=cache).logits for s in (0, 40, 80)], 1)
            errors[bits] = float((logits - full).abs().max())
    assert errors[8] < errors[4] < errors[2]
    # 8 bits, chunks of 40: each call leaves 16 residual tokens (40 - 16 = 24, then 40 and 40 quantized)
    memory = cache.memory()
    per_head = 2 * 104 * 16 + 2 * 2 * 13 * 16 + 2 * 2 * 104 * 2 + 2 * 16 * 16 * 2
    assert memory.kv_bytes == 4 * 2 * per_head and max(layer.seen_tokens for layer in memory.layers) == 120
    assert memory.kv_fraction == pytest.approx(per_head / (2 * 120 * 16 * 2))


def test_eviction_layer_keeps_sink_and_window():
    keys, values = _kv(50)
    layer = SinkWindowLayer(3, 10, dtype=torch.float32)
    out_k, _ = _feed(layer, keys, values, [20, 1, 29])
    assert out_k.shape[2] == 13 + 29  # what the last call attended: kept before it + its own tokens
    kept = list(range(3)) + list(range(40, 50))
    assert layer.kept_tokens == 13 and layer.get_seq_length() == 50
    assert torch.equal(layer.keys, keys[:, :, kept]) and torch.equal(layer.values, values[:, :, kept])
    assert layer.held_bytes() == 2 * 2 * 13 * 16 * 4
    with pytest.raises(ValueError, match="`window` >= 1"):
        SinkWindowLayer(4, 0)


def _eviction_mask(total, sink, window, chunk):
    """Token i (fed in chunks) sees j <= i when j is a sink or j is within `window` of i's chunk start."""
    i, j = torch.arange(total)[:, None], torch.arange(total)[None, :]
    start = (i // chunk) * chunk
    return ((j <= i) & ((j < sink) | (j >= start - window)))[None, None]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_eviction_equals_dense_attention_on_kept_tokens(tiny_model, arch):
    model = tiny_model(arch)
    total, sink, window, chunk = 61, 3, 10, 6
    ids = torch.randint(0, 128, (1, total), generator=torch.Generator().manual_seed(2))
    cache = EvictionCache(model.config, sink=sink, window=window, dtype=torch.float32)
    with torch.inference_mode():
        logits = torch.cat(
            [model(ids[:, s : s + chunk], past_key_values=cache).logits for s in range(0, total, chunk)], 1
        )
        reference = model(ids, attention_mask=_eviction_mask(total, sink, window, chunk)).logits
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == total and all(layer.kept_tokens == 13 for layer in cache.layers)


def test_eviction_fraction_in_fp16(tiny_model):
    model = tiny_model("llama")
    cache = EvictionCache(model.config, sink=4, window=20)
    with torch.inference_mode():
        model(torch.randint(0, 128, (1, 100)), past_key_values=cache)
    memory = cache.memory()
    assert memory.kv_bytes == 4 * 2 * 2 * 24 * 16 * 2 and memory.kv_fraction == pytest.approx(24 / 100)


def test_gemma3_sliding_layers_stay_transformers_layers(tiny_model):
    from transformers.cache_utils import DynamicSlidingWindowLayer

    model = tiny_model("gemma3")
    cache = KiviCache(model.config, bits=4, group=8, value_group=8, residual=8)
    kinds = [type(layer) for layer in cache.layers]
    assert kinds == [DynamicSlidingWindowLayer, KiviLayer] * 2
    with torch.inference_mode():
        model(torch.randint(0, 128, (1, 40)), past_key_values=cache)
    assert cache.get_seq_length() == 40 and math.isfinite(cache.memory().kv_fraction)
