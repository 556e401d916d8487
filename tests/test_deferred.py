"""Deferred compression: chunked prefill is token-by-token feeding, whatever the chunk size.

The query at position p sees the tokens before ``compressed_limit(p)`` compressed and every later one
(at least ``buffer`` tokens before it, and itself) in full precision, in any forward call; tokens
coded during a call that earlier queries of the same call still need exact are kept twice until the
call's attention has run. So the logits of any chunking equal those of one token per call (to float
tolerance), lossy or lossless, and a settled cache holds each token once.
"""

import pytest
import torch
from transformers import DynamicCache

from lexico_chat.cache import LexicoCache, LexicoLayer
from lexico_chat.config import CacheConfig
from tests.conftest import identity_dictionary, random_dictionary

CHUNKS = (1, 7, 32, 512)


def _logits(model, ids, cache, chunk):
    parts = []
    with torch.inference_mode():
        for start in range(0, ids.shape[1], chunk):
            parts.append(model(ids[:, start : start + chunk], past_key_values=cache, use_cache=True).logits)
    return torch.cat(parts, dim=1)


def _ids(length, seed=3):
    return torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
@pytest.mark.parametrize("sparsity,value_sparsity", [(2, 2), (8, 8), (3, 6)])
def test_chunked_prefill_equals_token_by_token(tiny_model, arch, key_space, sparsity, value_sparsity):
    model = tiny_model(arch)
    config = CacheConfig(
        sparsity=sparsity,
        value_sparsity=value_sparsity,
        atoms=64,
        buffer=8,
        window=4,
        coef_dtype="float32",
        select_dtype="float32",
        buffer_dtype="float32",
    )
    dictionary = random_dictionary(model, key_space=key_space)
    ids = _ids(70)
    reference = _logits(model, ids, LexicoCache.from_model(model, dictionary, config), 1)
    full = _logits(model, ids, DynamicCache(config=model.config), 70)
    assert (reference - full).abs().max() > 1e-3  # the codes are lossy: compression is really in the path
    for chunk in CHUNKS:
        cache = LexicoCache.from_model(model, dictionary, config)
        torch.testing.assert_close(_logits(model, ids, cache, chunk), reference, rtol=1e-4, atol=1e-4)
        for layer in cache.lexico_layers:  # settled: each token held once, the schedule of one-at-a-time
            assert layer.compressed_length == layer.compressed_limit(69)
            assert layer.buffer_start == layer.compressed_length
            assert layer.get_seq_length() == 70


def test_default_storage_chunking_changes_nothing_but_rounding(tiny_model):
    """With fp8 coefficients and bf16 atom selection (the defaults), a chunk codes its tokens in one OMP batch
    instead of window by window, so a coefficient can round to the other side of an fp8 step; the logits
    then move by far less than compression itself moves them."""
    model = tiny_model("llama")
    config = CacheConfig(sparsity=8, atoms=64, buffer=8, window=4)
    dictionary = random_dictionary(model, key_space="pre_rope")
    ids = _ids(70)
    reference = _logits(model, ids, LexicoCache.from_model(model, dictionary, config), 1)
    full = _logits(model, ids, DynamicCache(config=model.config), 70)
    chunked = _logits(model, ids, LexicoCache.from_model(model, dictionary, config), 32)
    assert (chunked - reference).abs().max() < 0.05 * (reference - full).abs().max()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
def test_lossless_chunked_prefill_equals_dynamic_cache(tiny_model, arch, key_space):
    model = tiny_model(arch)
    head_dim = model.config.head_dim
    config = CacheConfig(sparsity=head_dim, buffer=8, window=4, coef_dtype="float32", buffer_dtype="float32")
    ids = _ids(70, seed=5)
    full = _logits(model, ids, DynamicCache(config=model.config), 70)
    for chunk in CHUNKS:
        cache = LexicoCache.from_model(model, identity_dictionary(model, key_space), config)
        torch.testing.assert_close(_logits(model, ids, cache, chunk), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("buffer,window", [(8, 4), (0, 4), (5, 32), (128, 32)])
def test_schedule_every_query_sees_its_buffer_exact(buffer, window):
    gen = torch.Generator().manual_seed(0)
    dk, dv = torch.randn(16, 64, generator=gen), torch.randn(16, 64, generator=gen)
    layer = LexicoLayer(dk / dk.norm(dim=0), dv / dv.norm(dim=0), CacheConfig(sparsity=4, buffer=buffer, window=window))
    seen = 0
    for t in [1, 3, 70, 1, 1, 200, 1, 5]:
        k, v = torch.randn(1, 2, t, 16, generator=gen), torch.randn(1, 2, t, 16, generator=gen)
        keys, _ = layer.update(k, v)
        first = layer.compressed_limit(seen)  # what the call's first query sees compressed
        assert layer.buffer_start == first and keys.shape[2] == seen + t - first  # exact from there on
        assert layer.compressed_length == layer.compressed_limit(seen + t - 1) >= first
        assert seen - first >= min(seen, buffer)  # the first query sees >= buffer earlier tokens exact
        seen += t
        layer.settle()
        assert layer.get_seq_length() == seen and layer.buffer_start == layer.compressed_length
        assert layer.compressed_length % window == 0
        assert layer.buffer_length >= min(seen, buffer) and layer.buffer_length <= buffer + window
        assert layer.get_mask_sizes(3) == (seen + 3, 0)
