"""Budgeted adaptive sparsity: the allocation, the prefix codes, the store of varying-length codes, the cache.

References: OMP at each sparsity (the prefix property), float64 least squares on each vector's atoms, a greedy
that hands out one atom at a time, padded codes built by Python loops, token-by-token feeding."""

import pytest
import torch

from lexico_chat import native
from lexico_chat.adaptive import (
    NORM_POWER,
    adaptive_codes,
    allocate,
    longest_code,
    prefix_coefficients,
    window_atoms,
)
from lexico_chat.budget import code_bytes
from lexico_chat.cache import LexicoCache, LexicoLayer
from lexico_chat.cache.store import AdaptiveCodeStore, padded_codes
from lexico_chat.config import CacheConfig
from lexico_chat.engine.cache_state import export_cache, import_cache
from lexico_chat.errors import LexicoError
from lexico_chat.omp import omp, omp_factors
from tests.conftest import random_dictionary


def _dictionary(m=16, n=64, seed=0):
    d = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=0)


def _vectors(count, m=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, m, generator=gen) * torch.rand(count, 1, generator=gen).mul(3).add(0.1)


@pytest.mark.parametrize(
    "s,window,longest,bits,coef,expected",
    [(4, 32, 8, 12, 1, 120), (8, 32, 16, 12, 1, 248), (3, 32, 6, 12, 1, 108), (4, 32, 8, 16, 1, 122),
     (4, 8, 8, 12, 2, 30), (1, 32, 2, 12, 1, 44)],
)  # fmt: skip
def test_window_atoms_spend_the_bytes_of_fixed_codes(s, window, longest, bits, coef, expected):
    atoms = window_atoms(s, window, longest, bits, coef)
    assert atoms == expected and atoms % 2 == 0
    index = 1.5 if bits == 12 else 2
    spent = atoms * (index + coef) + window // 2  # indices, coefficients, 4-bit counts
    assert window * code_bytes(s, bits, coef) - 2 * (index + coef) < spent <= window * code_bytes(s, bits, coef)


def test_longest_code():
    assert [longest_code(s, 64, 4096) for s in (1, 4, 8, 12, 16, 24)] == [2, 8, 16, 16, 16, 24]
    assert longest_code(4, 6, 4096) == 6 and longest_code(8, 64, 10) == 10


def test_omp_prefixes_are_omp_at_every_sparsity():
    x, d = _vectors(40), _dictionary()
    idx, u, z = omp_factors(x, d, 8)
    for k in range(1, 9):
        ref_idx, ref_coef = omp(x, d, k)
        assert torch.equal(idx[:, :k], ref_idx)
        coef = prefix_coefficients(u, z, torch.full((40,), k))
        torch.testing.assert_close(coef[:, :k], ref_coef, rtol=1e-4, atol=1e-5)
        assert not coef[:, k:].any()
    residual = x.square().sum(1) - z.square().cumsum(1)[:, 3]  # the squared residual after 4 atoms
    rebuilt = (d.t()[idx[:, :4].long()] * prefix_coefficients(u, z, torch.full((40,), 4))[:, :4, None]).sum(1)
    torch.testing.assert_close(residual, (x - rebuilt).square().sum(1), rtol=1e-3, atol=1e-4)


def test_prefix_coefficients_are_least_squares_on_each_prefix():
    x, d = _vectors(30), _dictionary()
    idx, u, z = omp_factors(x, d, 8)
    counts = torch.randint(1, 9, (30,), generator=torch.Generator().manual_seed(2))
    coef = prefix_coefficients(u, z, counts)
    for i in range(30):
        c = int(counts[i])
        atoms = d[:, idx[i, :c].long()].double()
        expected = torch.linalg.lstsq(atoms, x[i].double().unsqueeze(1)).solution.squeeze(1)
        torch.testing.assert_close(coef[i, :c].double(), expected, rtol=1e-4, atol=1e-5)
        assert not coef[i, c:].any()


def _greedy(z, norms, window, atoms):
    """One atom at a time to the vector of its group whose next atom gains the most (weights made
    non-increasing, as ``allocate`` does)."""
    gain = torch.cummin((z / norms.pow(NORM_POWER).unsqueeze(1)).square(), dim=1).values
    counts = torch.ones(len(z), dtype=torch.int64)
    for start in range(0, len(z), window):
        for _ in range(atoms - window):
            group = range(start, start + window)
            best = max((i for i in group if counts[i] < z.shape[1]), key=lambda i: float(gain[i, counts[i]]))
            counts[best] += 1
    return counts


def test_allocate_is_the_one_atom_at_a_time_greedy():
    x, d = _vectors(48), _dictionary()
    _, _, z = omp_factors(x, d, 6)
    norms = x.norm(dim=1)
    for atoms in (8, 20, 30, 48):
        counts = allocate(z, norms, 8, atoms)
        assert torch.equal(counts, _greedy(z, norms, 8, atoms))
        assert counts.view(6, 8).sum(1).tolist() == [atoms] * 6 and counts.min() >= 1 and counts.max() <= 6


def test_allocate_refuses_a_budget_outside_its_range():
    z = torch.ones(16, 4)
    for atoms in (7, 33):
        with pytest.raises(ValueError, match="atoms"):
            allocate(z, torch.ones(16), 8, atoms)
    with pytest.raises(ValueError, match="groups"):
        allocate(torch.ones(12, 4), torch.ones(12), 8, 16)


def test_adaptive_codes_beat_fixed_codes_at_the_same_atoms_on_their_objective():
    """At the atoms of fixed codes, the allocation lowers the weighted squared error it minimises."""
    x, d = _vectors(256, seed=5), _dictionary()
    idx, coef, counts = adaptive_codes(x, d, 8, 32, 32 * 4)
    fixed_idx, fixed_coef = omp(x, d, 4)
    weight = x.norm(dim=1).pow(-2 * NORM_POWER)

    def error(i, c):
        return ((x - (d.t()[i.long()] * c.unsqueeze(-1)).sum(1)).square().sum(1) * weight).sum()

    assert counts.sum() == 256 * 4 and (counts != 4).any()
    assert error(idx, coef) < 0.95 * error(fixed_idx, fixed_coef)


def _padded_reference(indices, coefs, counts, longest):
    b, h, t = counts.shape
    out_idx = torch.zeros(b, h, t, longest, dtype=torch.int16)
    out_coef = torch.zeros(b, h, t, longest, dtype=torch.float32)
    for i in range(b):
        for j in range(h):
            atom = 0
            for k in range(t):
                n = int(counts[i, j, k])
                out_idx[i, j, k, :n] = indices[i, j, atom : atom + n]
                out_coef[i, j, k, :n] = coefs[i, j, atom : atom + n].float()
                atom += n
    return out_idx, out_coef


def _fill(store, windows, seed=0):
    """Append ``windows`` random windows one call each (and two at once at the end); returns what went in."""
    gen = torch.Generator().manual_seed(seed)
    b, h = store.counts.shape[:2]
    w, longest, atoms = store.window, store.sparsity, store.window_atoms
    runs = []
    for n in windows:
        counts = torch.stack([_random_counts(gen, w, longest, atoms) for _ in range(b * h * n)]).view(b, h, n * w)
        idx = torch.randint(0, 4096, (b, h, n * w, longest), generator=gen)
        coef = torch.randn(b, h, n * w, longest, generator=gen)
        keep = torch.arange(longest) < counts.unsqueeze(-1)
        store.append(idx, coef * keep, counts)
        runs.append((idx[keep].view(b, h, -1), coef[keep].view(b, h, -1), counts))
    return [torch.cat(parts, dim=2) for parts in zip(*runs)]


def _random_counts(gen, window, longest, atoms):
    counts = torch.ones(window, dtype=torch.int64)
    while counts.sum() < atoms:
        i = int(torch.randint(0, window, (1,), generator=gen))
        if counts[i] < longest:
            counts[i] += 1
    return counts


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("coef_dtype", [torch.float8_e4m3fn, torch.float16, torch.float32])
@pytest.mark.parametrize("use_native", [True, False])
def test_store_holds_runs_and_gives_padded_codes(bits, coef_dtype, use_native, monkeypatch):
    if use_native and not native.available():
        pytest.skip("native kernels unavailable")
    monkeypatch.setenv(native.ENV_SWITCH, "1" if use_native else "0")
    store = AdaptiveCodeStore(2, 3, 8, 8, 40, coef_dtype, torch.device("cpu"), bits)
    idx, coef, counts = _fill(store, [1, 3, 2, 9])
    assert store.length == 15 * 8 and store.reallocations >= 2
    got_idx, got_coef, got_counts = store.runs()
    assert torch.equal(got_idx, idx.to(torch.int16)) and torch.equal(got_counts, counts.to(torch.uint8))
    assert torch.equal(got_coef.float(), coef.to(coef_dtype).float())
    ref_idx, ref_coef = _padded_reference(idx, coef.to(coef_dtype), counts, 8)
    padded_idx, padded_coef = store.stored()
    assert padded_idx.dtype == torch.int16 and padded_coef.dtype == coef_dtype
    assert torch.equal(padded_idx, ref_idx) and torch.equal(padded_coef.float(), ref_coef)
    per_row = 15 * 40 * ((1.5 if bits == 12 else 2) + coef_dtype.itemsize) + 15 * 8 // 2
    assert store.nbytes() == 2 * 3 * per_row
    assert store.nbytes(False) == sum(t.untyped_storage().nbytes() for t in (store.indices, store.coefs, store.counts))
    store.select_batch(torch.tensor([1]))
    assert torch.equal(store.stored()[0], ref_idx[1:])


def test_native_expansion_matches_the_torch_layout():
    if not native.available():
        pytest.skip("native kernels unavailable")
    store = AdaptiveCodeStore(1, 2, 16, 32, 248, torch.float8_e4m3fn, torch.device("cpu"), 12)
    _fill(store, [2, 5], seed=3)
    expected = padded_codes(*store.runs(), 16)
    got = native.expand_codes(store)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1].view(torch.uint8), expected[1].view(torch.uint8))


def test_store_refuses_partial_windows_and_odd_layouts():
    with pytest.raises(ValueError, match="even"):
        AdaptiveCodeStore(1, 1, 8, 7, 28, torch.float16, torch.device("cpu"), 12)
    store = AdaptiveCodeStore(1, 1, 8, 8, 40, torch.float16, torch.device("cpu"), 12)
    with pytest.raises(ValueError, match="whole windows"):
        store.append_runs(torch.zeros(1, 1, 20, dtype=torch.int16), torch.zeros(1, 1, 20), torch.ones(1, 1, 4))


def _config(**changes):
    base = dict(sparsity=3, atoms=64, buffer=8, window=4, coef_dtype="float32", select_dtype="float32",
                buffer_dtype="float32", code_length="adaptive")  # fmt: skip
    return CacheConfig(**{**base, **changes})


def _logits(model, ids, cache, chunk):
    with torch.inference_mode():
        parts = [model(ids[:, i : i + chunk], past_key_values=cache, use_cache=True).logits
                 for i in range(0, ids.shape[1], chunk)]  # fmt: skip
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
def test_adaptive_cache_chunked_prefill_equals_token_by_token(tiny_model, arch, key_space):
    model = tiny_model(arch)
    dictionary = random_dictionary(model, key_space=key_space)
    ids = torch.randint(0, 128, (1, 70), generator=torch.Generator().manual_seed(3))
    reference = _logits(model, ids, LexicoCache.from_model(model, dictionary, _config()), 1)
    fixed = _logits(model, ids, LexicoCache.from_model(model, dictionary, _config(code_length="fixed")), 1)
    assert (reference - fixed).abs().max() > 1e-4  # the codes really differ from fixed ones
    for chunk in (7, 32, 70):
        cache = LexicoCache.from_model(model, dictionary, _config())
        torch.testing.assert_close(_logits(model, ids, cache, chunk), reference, rtol=1e-4, atol=1e-4)
        assert all(isinstance(layer.key_codes, AdaptiveCodeStore) for layer in cache.lexico_layers)


def test_adaptive_attention_reads_each_vectors_own_code(tiny_model):
    """The codes attention reads are the OMP prefix codes of the allocation: rebuilt, they are the least-squares
    fits of the layer's exact keys and values on their atoms."""
    model = tiny_model("llama")
    dictionary = random_dictionary(model)
    cache = LexicoCache.from_model(model, dictionary, _config(window=8, buffer=8))
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(4))
    exact = []
    layer = cache.lexico_layers[0]
    original = LexicoLayer._compress

    def spy(self, count):
        if self is layer:
            offset = self.compressed_length - self.buffer_start
            exact.append(self.value_buffer.view()[:, :, offset : offset + count].clone())
        original(self, count)

    LexicoLayer._compress = spy
    try:
        _logits(model, ids, cache, 40)
    finally:
        LexicoLayer._compress = original
    values = torch.cat(exact, dim=2)[0]  # (h, T, m)
    kv = layer.compressed()
    idx, coef = kv.value_indices[0].long(), kv.value_coefs[0].float()  # (h, T, longest)
    counts = layer.value_codes.runs()[2][0]
    assert counts.view(-1, 8).sum(1).eq(layer.value_codes.window_atoms).all() and (counts != counts[0, 0]).any()
    atoms = layer.value_dictionary
    for h in range(values.shape[0]):
        for t in range(values.shape[1]):
            c = int(counts[h, t])
            fit = torch.linalg.lstsq(atoms[:, idx[h, t, :c]].double(), values[h, t].double().unsqueeze(1)).solution
            torch.testing.assert_close(coef[h, t, :c].double(), fit.squeeze(1), rtol=1e-3, atol=1e-4)
            assert not coef[h, t, c:].any()


def test_adaptive_cache_memory_is_the_bytes_held_and_no_more_than_fixed(tiny_model):
    model = tiny_model("llama")
    dictionary = random_dictionary(model)
    caches = {}
    for length in ("adaptive", "fixed"):
        cache = LexicoCache.from_model(model, dictionary, _config(code_length=length, coef_dtype="float8_e4m3fn"))
        _logits(model, torch.arange(50).unsqueeze(0), cache, 50)
        caches[length] = cache
    adaptive, fixed = caches["adaptive"].memory(), caches["fixed"].memory()
    held = 0
    for layer in caches["adaptive"].lexico_layers:
        for store in (layer.key_codes, layer.value_codes):
            width = 3 * store.atoms // 2
            held += sum(t.nbytes for t in (store.indices[..., :width], store.coefs[..., : store.atoms],
                                           store.counts[..., : store.length // 2]))  # fmt: skip
    assert adaptive.compressed_bytes == held > 0
    assert adaptive.compressed_tokens == fixed.compressed_tokens and adaptive.compressed_bytes <= fixed.compressed_bytes


def test_exported_adaptive_cache_continues_identically(tiny_model):
    model = tiny_model("llama")
    dictionary = random_dictionary(model, key_space="pre_rope")
    ids = torch.randint(0, 128, (1, 60), generator=torch.Generator().manual_seed(6))
    cache = LexicoCache.from_model(model, dictionary, _config())
    _logits(model, ids[:, :45], cache, 16)
    tensors, facts = export_cache(cache)
    assert tensors["layer0.key_counts"].shape[2] == cache.lexico_layers[0].compressed_length
    fresh = LexicoCache.from_model(model, dictionary, _config())
    import_cache(fresh, tensors, facts, torch.device("cpu"))
    assert fresh.memory().kv_bytes == cache.memory().kv_bytes
    torch.testing.assert_close(_logits(model, ids[:, 45:], fresh, 4), _logits(model, ids[:, 45:], cache, 4))


def test_code_length_is_checked():
    with pytest.raises(LexicoError, match="--code-length must be one of"):
        CacheConfig(code_length="variable")


def test_auto_adapts_below_eight_atoms_and_says_so():
    assert CacheConfig(sparsity=4).adaptive_codes and CacheConfig(sparsity=6).adaptive_codes
    assert (
        not CacheConfig(sparsity=8).adaptive_codes and not CacheConfig(sparsity=4, code_length="fixed").adaptive_codes
    )
    assert CacheConfig(sparsity=8, code_length="adaptive").adaptive_codes
    assert CacheConfig(sparsity=4).sparsity_label() == "4 adaptive" and CacheConfig().sparsity_label() == "8"
    assert CacheConfig(sparsity=4, key_sparsity=8).adaptive_codes is False
