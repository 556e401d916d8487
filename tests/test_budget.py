"""Per-layer atom budgets: the allocation against brute force, the profile in dictionary metadata, the setting,
and a cache that holds a different s per layer (exact bytes, saved state, chunked = token-by-token)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from lexico_chat.budget import DECAY, PROFILE_SPARSITY, code_bytes, layer_sparsities, sparsity_plan
from lexico_chat.cache import LexicoCache
from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import DictionaryMeta, LexicoDictionary
from lexico_chat.engine.cache_state import export_cache, import_cache
from lexico_chat.errors import LexicoError
from lexico_chat.models import model_dims
from tests.conftest import lexico_generate, random_dictionary


def test_code_bytes_as_the_store_packs_them():
    assert [code_bytes(s) for s in (1, 2, 3, 4, 8)] == [4, 5, 9, 10, 20]  # fp8 + 12-bit pairs (odd s padded)
    assert code_bytes(4, index_bits=16) == 12 and code_bytes(4, coef_bytes=2) == 14


def _excess(weights, sizes):
    return sum(max(w, 1e-3) * math.exp(-DECAY * (s - PROFILE_SPARSITY)) for w, s in zip(weights, sizes))


@pytest.mark.parametrize("weights,mean", [((0.3, 0.01, 0.05), 4), ((1.0, 1.0, 1.0), 3), ((0.0, -0.1, 2.0), 5)])
def test_allocation_is_near_the_best_within_the_bytes(weights, mean):
    high = 2 * mean
    budget = len(weights) * code_bytes(mean)
    got = layer_sparsities(weights, mean, high=high)
    assert sum(code_bytes(s) for s in got) <= budget and all(1 <= s <= high for s in got)
    feasible = [
        sizes
        for sizes in itertools.product(range(1, high + 1), repeat=len(weights))
        if sum(code_bytes(s) for s in sizes) <= budget
    ]
    best = min(_excess(weights, sizes) for sizes in feasible)
    assert _excess(weights, got) <= 1.05 * best  # greedy by excess removed per byte: near the optimum
    assert _excess(weights, got) <= _excess(weights, [mean] * len(weights))  # never worse than uniform


def test_more_sensitive_layers_get_at_least_as_many_atoms():
    weights = [0.01, 0.4, 0.02, 0.2, 0.0, 0.3]
    got = layer_sparsities(weights, 4, high=8)
    order = sorted(range(len(weights)), key=lambda i: weights[i])
    assert [got[i] for i in order] == sorted(got)
    assert layer_sparsities([0.1] * 6, 4, high=8) == (4,) * 6  # equal layers: the uniform allocation


def test_profile_round_trips_in_dictionary_metadata(tmp_path, tiny_model):
    dictionary = random_dictionary(tiny_model("llama"))
    layers = dictionary.meta.num_layers
    meta = dataclasses.replace(dictionary.meta, layer_sensitivity=[0.5 * i for i in range(layers)])
    path = LexicoDictionary(dictionary.keys, dictionary.values, meta).save(tmp_path / "d.safetensors")
    loaded = LexicoDictionary.load(path)
    assert loaded.meta.layer_sensitivity == tuple(0.5 * i for i in range(layers))
    assert loaded.fingerprint() == dictionary.fingerprint()  # a profile does not change what sessions name
    for bad in ([1.0] * (layers + 1), [float("nan")] * layers, "0.1", [True] * layers):
        with pytest.raises(ValueError):
            DictionaryMeta.from_json(
                DictionaryMeta(**{**dataclasses.asdict(dictionary.meta), "layer_sensitivity": None}).to_json()[:-1]
                + f', "layer_sensitivity": {_json(bad)}}}'
            )


def _json(value):
    import json

    return json.dumps(value) if not isinstance(value, float) else "NaN"


def test_the_setting_is_checked():
    with pytest.raises(LexicoError, match="--layer-budget must be one of"):
        CacheConfig(layer_budget="greedy")
    with pytest.raises(LexicoError, match="--key-sparsity"):
        CacheConfig(layer_budget="profile", key_sparsity=4)


def test_a_profile_is_required(tiny_model):
    model = tiny_model("llama")
    with pytest.raises(LexicoError, match="layer_sensitivity.py"):
        LexicoCache.from_model(model, random_dictionary(model), CacheConfig(sparsity=4, layer_budget="profile"))


def _profiled(model, atoms=64):
    dictionary = random_dictionary(model, atoms=atoms, key_space="pre_rope")
    layers = dictionary.meta.num_layers
    meta = dataclasses.replace(dictionary.meta, layer_sensitivity=[0.5 if i == 0 else 0.01 for i in range(layers)])
    return LexicoDictionary(dictionary.keys, dictionary.values, meta)


def test_cache_holds_each_layers_share_and_saves_it(tiny_model):
    model = tiny_model("llama")
    dictionary = _profiled(model)
    config = CacheConfig(sparsity=4, atoms=64, buffer=8, window=4, layer_budget="profile", code_length="fixed")
    plan = sparsity_plan(config, dictionary.meta)
    assert plan[0][0] > 4 > min(k for k, _ in plan[1:])  # the sensitive first layer takes atoms from the others
    cache = LexicoCache.from_model(model, dictionary, config)
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(4))
    lexico_generate(model, ids, 6, cache)
    heads = model_dims(model.config).num_kv_heads
    for layer, (k, v), fact in zip(cache.lexico_layers, plan, cache.memory().layers):
        assert layer.key_codes.view()[1].shape[-1] == k and layer.value_codes.view()[1].shape[-1] == v
        tokens = fact.compressed_tokens
        assert fact.compressed_bytes == tokens * heads * (code_bytes(k) + code_bytes(v))  # exact, per layer
    total = sum(code_bytes(k) + code_bytes(v) for k, v in plan)
    assert total <= len(plan) * 2 * code_bytes(4)
    tensors, facts = export_cache(cache)
    restored = LexicoCache.from_model(model, dictionary, config)
    import_cache(restored, tensors, facts, torch.device("cpu"))
    follow = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(
            model(follow, past_key_values=cache).logits, model(follow, past_key_values=restored).logits, rtol=0, atol=0
        )


def test_chunked_prefill_equals_token_by_token_with_a_profile(tiny_model):
    model = tiny_model("llama")
    dictionary = _profiled(model)
    config = CacheConfig(sparsity=3, atoms=64, buffer=8, window=4, layer_budget="profile")
    ids = torch.randint(0, 128, (1, 41), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        whole = model(ids, past_key_values=LexicoCache.from_model(model, dictionary, config)).logits
        cache = LexicoCache.from_model(model, dictionary, config)
        steps = torch.cat([model(ids[:, i : i + 1], past_key_values=cache).logits for i in range(ids.shape[1])], 1)
    torch.testing.assert_close(whole, steps, rtol=1e-4, atol=1e-4)


def test_auto_is_the_default_profile_where_the_dictionary_has_one(tiny_model):
    model = tiny_model("llama")
    profiled, plain = _profiled(model), random_dictionary(model, atoms=64, key_space="pre_rope")
    layers = profiled.meta.num_layers
    config = CacheConfig(sparsity=4, atoms=64)
    assert config.layer_budget == "auto"
    assert config.profiled(profiled.meta) and not config.profiled(plain.meta)
    assert sparsity_plan(config, profiled.meta) == sparsity_plan(config.replace(layer_budget="profile"), profiled.meta)
    assert len(set(sparsity_plan(config, profiled.meta))) > 1
    assert sparsity_plan(config, plain.meta) == [(4, 4)] * layers  # no profile: uniform, and no error
    LexicoCache.from_model(model, plain, config)
    split = config.replace(key_sparsity=5, value_sparsity=3)  # keys and values apart: uniform
    assert not split.profiled(profiled.meta) and sparsity_plan(split, profiled.meta) == [(5, 3)] * layers
    uniform = config.replace(layer_budget="uniform")
    assert sparsity_plan(uniform, profiled.meta) == [(4, 4)] * layers
    assert config.resolved(profiled.meta).layer_budget == "profile"
    assert config.resolved(plain.meta).layer_budget == "uniform" and uniform.resolved(profiled.meta) is uniform
    assert (
        config.sparsity_label(profiled.meta) == "4 per layer adaptive"
        and config.sparsity_label(plain.meta) == "4 adaptive"
    )
    assert (
        config.sparsity_label() == "4 adaptive"
        and config.replace(layer_budget="profile").sparsity_label() == "4 per layer adaptive"
    )


def test_a_profiled_plan_keeps_half_the_atoms_in_every_layer(tiny_model):
    """The floor that keeps retrieval: no layer below sparsity // 2, none above 2 * sparsity, bytes within."""
    profiled = _profiled(tiny_model("llama"))
    for sparsity in (2, 4, 8):
        plan = [
            k for k, _ in sparsity_plan(CacheConfig(sparsity=sparsity, atoms=64, layer_budget="profile"), profiled.meta)
        ]
        assert min(plan) >= max(1, sparsity // 2) and max(plan) <= 2 * sparsity
        assert sum(code_bytes(k) for k in plan) <= len(plan) * code_bytes(sparsity)
