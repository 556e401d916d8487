"""LexicoCache inside transformers: generate(), forward calls, multi-turn and prefill, against DynamicCache."""

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from lexico_chat.cache import LexicoCache, LexicoLayer
from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.engine.prefill import prefill
from lexico_chat.errors import LexicoError
from tests.conftest import TINY_ARCHS, identity_dictionary, lexico_generate, random_dictionary, reference_generate


def _ids(length, batch=1, seed=1, vocab=128):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _lossless(model, buffer=8, window=4, key_space="post_rope"):
    head_dim = model.config.head_dim
    dictionary = identity_dictionary(model, key_space)
    return LexicoCache.from_model(
        model,
        dictionary,
        CacheConfig(sparsity=head_dim, buffer=buffer, window=window, coef_dtype="float32", buffer_dtype="float32"),
    )


KEY_SPACES = ["post_rope", "pre_rope"]


@pytest.mark.parametrize("key_space", KEY_SPACES)
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_lossless_generate_equals_dynamic_cache(tiny_model, arch, key_space):
    model = tiny_model(arch)
    ids = _ids(50)
    expected = reference_generate(model, ids, 40)
    cache = _lossless(model, key_space=key_space)
    assert torch.equal(lexico_generate(model, ids, 40, cache), expected)
    lexico = cache.lexico_layers
    assert lexico and all(layer.compressed_length == 80 and layer.buffer_length == 9 for layer in lexico)


def test_gemma3_sliding_layers_stay_uncompressed(tiny_model):
    model = tiny_model("gemma3")
    cache = LexicoCache.from_model(model, random_dictionary(model), CacheConfig(sparsity=4, buffer=8, window=4))
    lexico_generate(model, _ids(30), 10, cache)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["DynamicSlidingWindowLayer", "LexicoLayer"] * 2
    for layer in cache.layers:
        if not isinstance(layer, LexicoLayer):
            assert layer.keys.shape[2] <= model.config.sliding_window  # a normal sliding-window cache
            assert layer.get_seq_length() == 39
    assert cache.memory().compressed_tokens == 28  # whole windows more than 8 tokens behind the last


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lossy_cache_changes_logits_only_through_compression(tiny_model, arch):
    """Before anything is compressed the logits are DynamicCache's; once a window is compressed with a lossy
    dictionary they move (the compressed path is really used)."""
    model = tiny_model(arch)
    ids = _ids(16)
    cache = LexicoCache.from_model(
        model, random_dictionary(model), CacheConfig(sparsity=4, buffer=8, window=4, buffer_dtype="float32")
    )
    with torch.inference_mode():
        ref = model(ids, past_key_values=DynamicCache(config=model.config)).logits
        first = model(ids[:, :8], past_key_values=cache).logits  # 8 tokens: nothing compressed yet
        second = model(ids[:, 8:], past_key_values=cache).logits  # positions 12..15 see one window compressed
    torch.testing.assert_close(first, ref[:, :8])
    assert not torch.allclose(second, ref[:, 8:], atol=1e-4)


@pytest.mark.parametrize("key_space", KEY_SPACES)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_multi_turn_equals_one_dynamic_cache_run(tiny_model, arch, key_space):
    model = tiny_model(arch)
    cache = _lossless(model, key_space=key_space)
    turn1 = lexico_generate(model, _ids(30), 12, cache)
    prompt2 = torch.cat([turn1, _ids(9, seed=2)], dim=1)  # the user's next message
    turn2 = lexico_generate(model, prompt2, 20, cache)
    assert torch.equal(turn2, reference_generate(model, prompt2, 20))


@pytest.mark.parametrize("key_space", KEY_SPACES)
def test_successive_forwards_equal_one_full_forward(tiny_model, key_space):
    model = tiny_model("mistral")
    ids = _ids(64)
    cache = _lossless(model, buffer=0, window=4, key_space=key_space)
    with torch.inference_mode():
        full = model(ids).logits
        parts = [model(ids[:, a:b], past_key_values=cache).logits for a, b in ((0, 20), (20, 21), (21, 50), (50, 64))]
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 64 and cache.memory().buffer_tokens == 4  # the last query's own window


@pytest.mark.parametrize("key_space", KEY_SPACES)
def test_left_padded_batch_equals_dynamic_cache(tiny_model, key_space):
    """Padding masks reach compressed tokens: a left-padded batch generates as with DynamicCache (pre-RoPE
    codes are un-rotated and re-rotated by each row's own positions, which padding shifts)."""
    model = tiny_model("llama")
    ids = _ids(24, batch=2)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    expected = _generate_masked(model, ids, mask, None)
    got = _generate_masked(model, ids, mask, _lossless(model, key_space=key_space))
    assert torch.equal(got, expected)


def _generate_masked(model, ids, mask, cache):
    if cache is None:
        previous = model.config._attn_implementation
        model.set_attn_implementation("sdpa")
        cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=mask,
            past_key_values=cache,
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            pad_token_id=0,
        )
    if isinstance(cache, DynamicCache):
        model.set_attn_implementation(previous)
    return out


@pytest.mark.parametrize("key_space", KEY_SPACES)
def test_chunked_prefill_matches_full_forward(tiny_model, key_space):
    model = tiny_model("llama")
    ids = _ids(300)
    with torch.inference_mode():
        full = model(ids).logits[:, -1]
    seen = []
    cache = _lossless(model, buffer=16, window=8, key_space=key_space)
    last = prefill(model, ids, cache, chunk_size=64, progress=seen.append)
    torch.testing.assert_close(last, full, rtol=1e-4, atol=1e-4)
    assert seen == [64, 64, 64, 64, 44]
    assert cache.memory().compressed_tokens == 280 and cache.memory().buffer_tokens == 20  # 35 windows + 20


def test_cache_refuses_other_attention_and_wrong_dictionary(tiny_model):
    model = tiny_model("llama")
    cache = LexicoCache(identity_dictionary(model), CacheConfig(sparsity=4), model_config=model.config)
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(LexicoError, match="lexico"), torch.inference_mode():
            model(_ids(4), past_key_values=cache)
    finally:
        model.set_attn_implementation(previous)
    full = random_dictionary(model)
    two_layers = LexicoDictionary(full.keys[:2], full.values[:2], dataclasses.replace(full.meta, num_layers=2))
    with pytest.raises(LexicoError, match="layers"):
        LexicoCache.from_model(model, two_layers, CacheConfig(sparsity=4))
    with pytest.raises(LexicoError, match="sparsity"):
        LexicoCache.from_model(model, identity_dictionary(model), CacheConfig(sparsity=17))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_cuda_lossless_generate_and_bf16_logits(arch):
    from tests.conftest import build_tiny_model

    model = build_tiny_model(arch).cuda()
    ids = _ids(50).cuda()
    assert torch.equal(lexico_generate(model, ids, 40, _lossless(model)), reference_generate(model, ids, 40))
    model = model.to(torch.bfloat16)
    with torch.inference_mode():
        ref = model(ids, past_key_values=DynamicCache(config=model.config)).logits
        cache = _lossless(model, buffer=8, window=4)
        got = torch.cat([model(ids[:, a:b], past_key_values=cache).logits for a, b in ((0, 30), (30, 31), (31, 50))], 1)
    assert cache.lexico_layers[0].key_dictionary.device.type == "cuda"
    torch.testing.assert_close(got.float(), ref.float(), rtol=0.05, atol=0.05)  # bf16 rounding, fp32 codes


@pytest.mark.slow
@pytest.mark.parametrize("key_space", KEY_SPACES)
def test_default_model_lossless_greedy_64_tokens(default_model, key_space):
    model, tokenizer = default_model.model, default_model.tokenizer
    text = "Write a short story about a lighthouse keeper who finds a message in a bottle."
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    expected = reference_generate(model, ids, 64)
    cache = LexicoCache.from_model(
        model,
        identity_dictionary(model, key_space),
        CacheConfig(sparsity=64, buffer=16, window=32, coef_dtype="float32", buffer_dtype="float32"),
    )
    got = lexico_generate(model, ids, 64, cache)
    assert cache.memory().compressed_tokens > ids.shape[1]  # most of the context was compressed
    assert torch.equal(got, expected), (tokenizer.decode(got[0]), tokenizer.decode(expected[0]))
