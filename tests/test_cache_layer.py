"""LexicoLayer storage: compression schedule, append cost (structural), exact codes, memory accounting."""

import math

import pytest
import torch

from lexico_chat.cache import LexicoCache, LexicoLayer
from lexico_chat.cache.store import MIN_CAPACITY
from lexico_chat.config import CacheConfig
from lexico_chat.errors import LexicoError
from lexico_chat.omp import omp, reconstruct
from tests.conftest import random_dictionary


def _dicts(m=16, n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dk, dv = torch.randn(m, n, generator=gen), torch.randn(m, n, generator=gen)
    return dk / dk.norm(dim=0), dv / dv.norm(dim=0)


def _states(b, h, t, m, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, t, m, generator=gen), torch.randn(b, h, t, m, generator=gen)


def test_codes_are_one_batched_omp_of_the_oldest_tokens():
    """Stored codes equal OMP of the evicted tokens (flattened over batch, heads, tokens), stored as fp32."""
    dk, dv = _dicts()
    layer = LexicoLayer(
        dk,
        dv,
        CacheConfig(
            sparsity=4,
            buffer=6,
            window=4,
            coef_dtype="float32",
            select_dtype="float32",
            buffer_dtype="float32",
            code_length="fixed",
        ),
    )
    k, v = _states(2, 3, 11, 16, 1)
    layer.update(k, v)  # the last query (position 10) sees the window [0, 4) compressed: 4 tokens coded
    layer.settle()
    assert layer.compressed_length == 4 and layer.buffer_length == 7
    idx, coef = omp(k[:, :, :4].reshape(-1, 16), dk, 4, select_dtype=torch.float32)
    stored_idx, stored_coef = layer.key_codes.view()
    assert torch.equal(stored_idx, idx.view(2, 3, 4, 4))
    assert torch.equal(stored_coef, coef.view(2, 3, 4, 4))
    vidx, vcoef = layer.value_codes.view()
    ref = reconstruct(*omp(v[:, :, :4].reshape(-1, 16), dv, 4, select_dtype=torch.float32), dv)
    torch.testing.assert_close(reconstruct(vidx, vcoef, dv), ref.view(2, 3, 4, 16))
    assert torch.equal(layer.key_buffer.view(), k[:, :, 4:])


def test_keys_and_values_take_their_own_sparsity():
    """--key-sparsity 3 --value-sparsity 6: each store holds OMP codes of its own size, counted exactly."""
    dk, dv = _dicts()
    config = CacheConfig(
        sparsity=4, key_sparsity=3, value_sparsity=6, buffer=6, window=4, coef_dtype="float32", code_length="fixed",
        select_dtype="float32", buffer_dtype="float32",
    )  # fmt: skip
    layer = LexicoLayer(dk, dv, config)
    k, v = _states(2, 3, 11, 16, 1)
    layer.update(k, v)
    layer.settle()
    kidx, kcoef = layer.key_codes.view()
    vidx, vcoef = layer.value_codes.view()
    expected_k = omp(k[:, :, :4].reshape(-1, 16), dk, 3, select_dtype=torch.float32)
    expected_v = omp(v[:, :, :4].reshape(-1, 16), dv, 6, select_dtype=torch.float32)
    assert torch.equal(kidx, expected_k[0].view(2, 3, 4, 3)) and torch.equal(kcoef, expected_k[1].view(2, 3, 4, 3))
    assert torch.equal(vidx, expected_v[0].view(2, 3, 4, 6)) and torch.equal(vcoef, expected_v[1].view(2, 3, 4, 6))
    # batch x heads x (12-bit indices, an odd count padded to even, + fp32 coefficients)
    per_token = 2 * 3 * (4 * 1.5 + 3 * 4 + 6 * 1.5 + 6 * 4)
    assert layer.memory(0).compressed_bytes == 4 * per_token
    assert config.sparsity_label() == "k3/v6" and CacheConfig(key_sparsity=8).sparsity_label() == "8"


def test_fp8_coefficients_saturate_instead_of_overflowing():
    layer = LexicoLayer(*_dicts(), CacheConfig(sparsity=4, buffer=0, window=1))
    k, v = _states(1, 1, 3, 16, 2)
    layer.update(k * 1e4, v)  # coefficients far beyond float8_e4m3fn's 448
    _, coef = layer.key_codes.view()
    assert coef.dtype == torch.float8_e4m3fn
    assert torch.isfinite(coef.float()).all() and coef.float().abs().max() == 448


def test_append_cost_does_not_grow_with_length():
    """Storage is reused in place between doublings: O(log T) reallocations, stable data pointers."""
    layer = LexicoLayer(*_dicts(), CacheConfig(sparsity=4, buffer=16, window=8))
    pointers, buffer_pointers, steps = [], set(), 2000
    for step in range(steps):
        layer.update(*_states(1, 2, 1, 16, step))
        if layer.compressed_length:
            pointers.append((layer.key_codes.indices.data_ptr(), layer.key_codes.capacity))
        buffer_pointers.add(layer.key_buffer.data.data_ptr())
    changes = sum(1 for a, b in zip(pointers, pointers[1:], strict=False) if a[0] != b[0])
    expected = math.ceil(math.log2(layer.compressed_length / MIN_CAPACITY))
    assert changes == layer.key_codes.reallocations - 1 == expected  # the first allocation is not a change
    assert all(
        a[1] == b[1] for a, b in zip(pointers, pointers[1:], strict=False) if a[0] == b[0]
    )  # same storage, same size
    assert layer.key_codes.capacity < 2 * layer.compressed_length
    assert len(buffer_pointers) == layer.key_buffer.reallocations == 1  # the buffer is allocated once


def test_compressed_codes_never_move():
    layer = LexicoLayer(*_dicts(), CacheConfig(sparsity=4, buffer=4, window=4))
    layer.update(*_states(1, 2, 12, 16, 0))
    first = layer.key_codes.view()[0].clone(), layer.key_codes.view()[1].clone()
    for step in range(300):
        layer.update(*_states(1, 2, 1, 16, step + 1))
    idx, coef = layer.key_codes.view()
    assert first[0].shape[2] == 4  # position 11 sees the window [0, 4) compressed
    assert torch.equal(idx[:, :, :4], first[0]) and torch.equal(coef[:, :, :4], first[1])


def _held_bytes(tensor):
    return tensor.numel() * tensor.element_size()


@pytest.mark.parametrize(
    "coef_dtype,per_vector", [(torch.float8_e4m3fn, 2.5), (torch.float16, 3.5), (torch.float32, 5.5)]
)
def test_memory_equals_bytes_of_tensors_held(tiny_model, coef_dtype, per_vector):
    model = tiny_model("gemma3")  # two compressed and two sliding-window layers
    cache = LexicoCache.from_model(
        model,
        random_dictionary(model),
        CacheConfig(
            sparsity=4, buffer=8, window=4, coef_dtype=str(coef_dtype).removeprefix("torch."), code_length="fixed"
        ),
    )
    with torch.inference_mode():
        model(torch.arange(30).unsqueeze(0), past_key_values=cache)
        model(torch.arange(3).unsqueeze(0), past_key_values=cache)
    mem = cache.memory()
    compressed = allocated = buffer = buffer_alloc = fp16 = dictionary = 0
    for layer in cache.layers:
        if isinstance(layer, LexicoLayer):
            stores = (layer.key_codes, layer.value_codes)
            compressed += sum(_held_bytes(t) for st in stores for t in st.stored())  # 12-bit packed indices (N=64)
            allocated += sum(t.untyped_storage().nbytes() for st in stores for t in (st.indices, st.coefs))
            buffer += _held_bytes(layer.key_buffer.view()) + _held_bytes(layer.value_buffer.view())
            buffer_alloc += layer.key_buffer.data.untyped_storage().nbytes() * 2
            dictionary += _held_bytes(layer.key_dictionary) + _held_bytes(layer.value_dictionary)
            fp16 += 2 * 33 * 1 * 1 * 16 * 2  # K and V, 33 tokens, batch 1, 1 KV head, head_dim 16, 2 bytes
        else:
            buffer += _held_bytes(layer.keys) + _held_bytes(layer.values)
            buffer_alloc += layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
            fp16 += 2 * layer.keys.shape[2] * 16 * 2
    assert (mem.compressed_bytes, mem.allocated_bytes, mem.buffer_bytes) == (
        compressed,
        allocated + buffer_alloc,
        buffer,
    )
    assert (mem.fp16_bytes, mem.dictionary_bytes) == (fp16, dictionary)
    assert mem.compressed_tokens == 24 and mem.buffer_tokens == 9  # settled: each token held once
    assert mem.compressed_bytes == 2 * 2 * 24 * 4 * per_vector  # layers x (K, V) x tokens x s x bytes per atom
    assert mem.kv_fraction == pytest.approx((compressed + buffer) / fp16)
    assert sum(p.compressed_bytes for p in mem.layers) == mem.compressed_bytes
    assert [p.kind for p in mem.layers] == ["dense", "lexico", "dense", "lexico"]
    assert mem.to_dict()["kv_fraction"] == mem.kv_fraction


def test_invalid_settings_name_the_parameter():
    dk, dv = _dicts()
    with pytest.raises(ValueError, match="sparsity"):
        LexicoLayer(dk, dv, CacheConfig(sparsity=17))
    with pytest.raises(ValueError, match="sparsity"):
        LexicoLayer(dk, dv, CacheConfig(sparsity=4, value_sparsity=17))
    with pytest.raises(LexicoError, match=r"--coef-dtype must be one of .* got 'bfloat16'"):
        CacheConfig(sparsity=4, coef_dtype="bfloat16")
    with pytest.raises(LexicoError, match="--window must be >= 1, got 0"):
        CacheConfig(sparsity=4, window=0)
    with pytest.raises(LexicoError, match="--buffer must be >= 0, got -1"):
        CacheConfig(buffer=-1)
    with pytest.raises(LexicoError, match="--sparsity must be an integer, got '8'"):
        CacheConfig(sparsity="8")
    layer = LexicoLayer(dk, dv, CacheConfig(sparsity=4))
    with pytest.raises(NotImplementedError):
        layer.crop(-1)
