"""Pre-RoPE key coding: rotation helpers, the model probe, the shared table, collection and saved state."""

import pytest
import torch

from lexico_chat.cache import LexicoCache
from lexico_chat.config import CacheConfig
from lexico_chat.engine.cache_state import export_cache, import_cache
from lexico_chat.models import model_dims
from lexico_chat.rope import RopeTable, pair_order, probe_for, rotate, rotate_, rotate_pairs_, unrotate
from lexico_chat.training.collect import window_kv
from tests.conftest import lexico_generate, random_dictionary, rotate_complex


@pytest.mark.parametrize("scale", [1.0, 1.37])  # attention scaling multiplies cos and sin (YaRN, LongRoPE)
def test_rotate_matches_complex_reference_and_unrotate_inverts(scale):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)
    angles = torch.rand(5, 8, generator=gen, dtype=torch.float64) * 7
    cos, sin = angles.cos() * scale, angles.sin() * scale
    torch.testing.assert_close(rotate(x, cos, sin), rotate_complex(x, angles) * scale)
    torch.testing.assert_close(unrotate(rotate(x, cos, sin), cos, sin), x)
    torch.testing.assert_close(rotate_(x.clone(), cos, sin), rotate(x, cos, sin))
    order = pair_order(16)
    assert sorted(order.tolist()) == list(range(16)) and order[:4].tolist() == [0, 8, 1, 9]
    paired = rotate_pairs_(x.float()[..., order].contiguous(), cos.half(), sin.half())  # fp16 table, as stored
    expected = rotate(x, cos.half().double(), sin.half().double())[..., order]
    torch.testing.assert_close(paired.double(), expected, rtol=1e-6, atol=1e-6)
    table = RopeTable()  # a table's (cos, sin) are read in place, side by side: the same rotation
    table.append(cos.half().expand(3, -1, -1), sin.half().expand(3, -1, -1))
    held_cos, held_sin = table.view(1, 4)
    keys = x.float()[:, 1:4, order].contiguous()
    torch.testing.assert_close(
        rotate_pairs_(keys.clone(), held_cos, held_sin), rotate_pairs_(keys.clone(), held_cos.clone(), held_sin.clone())
    )


def test_probe_records_the_rotation_the_model_applied(tiny_model):
    """Un-rotating the cached keys by the probe's cos/sin gives k_proj's output (Llama has no k_norm)."""
    model = tiny_model("llama")
    dims = model_dims(model.config)
    captured = []
    hook = model.model.layers[1].self_attn.k_proj.register_forward_hook(lambda mod, inp, out: captured.append(out))
    try:
        ids = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(2))
        per_layer = window_kv(model, ids, "pre_rope")
    finally:
        hook.remove()
    expected = captured[0][0].view(40, dims.num_kv_heads, dims.head_dim).transpose(0, 1).reshape(-1, dims.head_dim)
    torch.testing.assert_close(per_layer[1][0], expected.float(), rtol=1e-5, atol=1e-5)
    post = window_kv(model, ids, "post_rope")
    assert not torch.allclose(post[1][0], per_layer[1][0])  # positions > 0 really are rotated
    torch.testing.assert_close(post[1][1], per_layer[1][1])  # values are the same either way


def test_probe_is_installed_once(tiny_model):
    model = tiny_model("qwen2")
    assert probe_for(model) is probe_for(model)


def test_table_grows_geometrically_and_selects_rows():
    table = RopeTable()
    cos = torch.arange(2 * 100 * 4, dtype=torch.float32).view(2, 100, 4)
    for start in range(0, 100, 30):
        table.append(cos[:, start : start + 30], -cos[:, start : start + 30])
    got_cos, got_sin = table.view()  # held in fp16 (integers below 2048 are exact)
    assert got_cos.dtype == torch.float16 and torch.equal(got_cos.float(), cos) and torch.equal(got_sin.float(), -cos)
    assert table.nbytes() == 2 * 2 * 100 * 4 * 2 and table.nbytes(False) >= table.nbytes()
    table.select_batch(torch.tensor([1]))
    assert torch.equal(table.view()[0], cos[1:])


def test_memory_counts_the_table_and_state_round_trips(tiny_model):
    """The rotary table is per-token memory (in kv_bytes) for compressed tokens only; saving and loading the
    cache keeps generation exact (buffered tokens' rotations are recomputed after the load)."""
    model = tiny_model("llama")
    dictionary = random_dictionary(model, key_space="pre_rope")
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(4))
    cache = LexicoCache.from_model(model, dictionary, CacheConfig(sparsity=4, buffer=8, window=4))
    lexico_generate(model, ids, 6, cache)
    memory = cache.memory()
    half = model_dims(model.config).head_dim // 2
    assert memory.layers[0].compressed_tokens == 24 and memory.layers[0].buffer_tokens == 11
    assert memory.rope_bytes == 2 * 24 * half * 2  # cos + sin of the 24 compressed tokens, fp16
    assert memory.kv_bytes == memory.compressed_bytes + memory.buffer_bytes + memory.rope_bytes
    tensors, facts = export_cache(cache)
    restored = LexicoCache.from_model(model, dictionary, CacheConfig(sparsity=4, buffer=8, window=4))
    import_cache(restored, tensors, facts, torch.device("cpu"))
    follow = torch.randint(0, 128, (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        a = model(follow, past_key_values=cache).logits
        b = model(follow, past_key_values=restored).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a file whose rotary table disagrees with the cache is refused before import_cache: test_session_fuzz.py


def test_empty_pre_rope_cache_round_trips(tiny_model):
    """A pre-RoPE cache that holds no tokens yet saves without a rotary table and loads back."""
    model = tiny_model("llama")
    dictionary = random_dictionary(model, key_space="pre_rope")
    tensors, facts = export_cache(LexicoCache.from_model(model, dictionary, CacheConfig(sparsity=4)))
    restored = LexicoCache.from_model(model, dictionary, CacheConfig(sparsity=4))
    import_cache(restored, tensors, facts, torch.device("cpu"))
    assert restored.rope_table.length == 0 and restored.get_seq_length() == 0


def test_recomputed_rotation_equals_the_models_bit_for_bit(tiny_model):
    """``RopeProbe.rotation`` gives exactly the (cos, sin) the model computed, for any subset of positions."""
    model = tiny_model("llama")
    probe = probe_for(model)
    with torch.inference_mode():
        model(torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(6)))
    cos, sin = probe.latest()
    assert probe.recomputable and torch.equal(probe.positions(), torch.arange(40)[None])
    got_cos, got_sin = probe.rotation(torch.arange(13, 40)[None])
    assert torch.equal(got_cos, cos[:, 13:]) and torch.equal(got_sin, sin[:, 13:])
    assert torch.equal(probe.latest()[0], cos)  # recomputing does not disturb what the layers read


def _prefill_then_decode(model, dictionary, config, ids, mask, steps, recomputable=True):
    """Logits of a left-padded batch: prefill, then ``steps`` greedy decode steps (positions from the mask)."""
    probe = probe_for(model)
    probe.recomputable, saved = recomputable, probe.recomputable
    try:
        cache = LexicoCache.from_model(model, dictionary, config)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        logits = []
        with torch.inference_mode():
            out = model(ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
            for _ in range(steps):
                logits.append(out.logits[:, -1])
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                out = model(nxt, attention_mask=mask, position_ids=positions, past_key_values=cache)
        return torch.stack(logits), cache
    finally:
        probe.recomputable = saved


def test_irregular_positions_keep_recomputed_rotations_exact(tiny_model):
    """A left-padded batch (row positions not offset + slot) stores explicit positions, and the rotations
    recomputed from them give the same logits as storing every token's rotation as it arrives."""
    model = tiny_model("llama")
    dictionary = random_dictionary(model, key_space="pre_rope")
    config = CacheConfig(sparsity=4, buffer=8, window=4)
    ids = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # row 1 is left-padded
    recomputed, cache = _prefill_then_decode(model, dictionary, config, ids, mask, 12)
    stored, reference = _prefill_then_decode(model, dictionary, config, ids, mask, 12, recomputable=False)
    torch.testing.assert_close(recomputed, stored, rtol=0, atol=0)
    assert cache.rope_table.length == cache.lexico_layers[0].compressed_length < cache.rope_table.seen == 32
    assert reference.rope_table.length == 32  # where rotations cannot be recomputed, every token's is stored
    half = model_dims(model.config).head_dim // 2
    assert cache.memory().rope_bytes == 2 * 2 * cache.rope_table.length * half * 2 + 2 * 32 * 4  # + int32 positions


def test_buffered_tokens_cost_exactly_the_buffer(tiny_model):
    """Before the first window is coded a pre-RoPE cache holds nothing but its (fp16) buffer: kv_fraction is 1,
    never above (the rotation of a buffered token is not stored; the issue-14 caveat)."""
    model = tiny_model("llama")
    dictionary = random_dictionary(model, key_space="pre_rope")
    cache = LexicoCache.from_model(model, dictionary, CacheConfig(sparsity=4, buffer=16, window=8))
    with torch.inference_mode():
        model(torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(8)), past_key_values=cache)
    memory = cache.memory()
    assert memory.rope_bytes == 0 and memory.kv_fraction == 1.0
    with torch.inference_mode():
        model(torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(9)), past_key_values=cache)
    memory = cache.memory()
    assert memory.layers[0].compressed_tokens == 8 and memory.rope_bytes > 0 and memory.kv_fraction < 1.0
