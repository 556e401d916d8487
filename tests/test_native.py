"""The native CPU kernels (``native.c``): pre-RoPE key scores and value weights in atom space equal
dense float64 references on rebuilt, rotated keys and values, for every stored code format, strided store views,
batch-broadcast rotations and thread counts; the build is cached and atomic, and without a compiler (or with
``LEXICO_NATIVE=0``) attention takes its PyTorch path with the same result."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from lexico_chat import native
from lexico_chat.attention import compressed_attention, reference
from lexico_chat.attention.codes import CompressedKV, pack_indices
from lexico_chat.omp import reconstruct
from lexico_chat.rope import pair_order
from tests.conftest import rotate_complex

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the native kernels cannot be built")

SHAPES = [
    # b, kv_heads, query rows per KV head, compressed tokens, head_dim, atoms, s
    (1, 3, 3, 300, 64, 256, 8),  # the default model's decode layout, two token blocks
    (2, 1, 4, 100, 16, 64, 5),  # batch 2, GQA 4, odd sparsity
    (1, 2, 1, 70, 128, 512, 3),  # head_dim 128 (Llama 3)
    (1, 2, 2, 33, 24, 64, 24),  # a head_dim without its own specialisation, s = head_dim
]
FORMATS = [(16, torch.float32), (12, torch.float8_e4m3fn), (12, torch.float16), (16, torch.bfloat16)]


def _stored(b, hkv, t, s, m, n, index_bits, coef_dtype, gen, spare=0):
    """Random codes as a store holds them: views of the first t tokens of buffers of t + ``spare``. About half the
    codes end in zero coefficients, as adaptive codes padded to the longest do."""
    dk, dv = (torch.nn.functional.normalize(torch.randn(m, n, generator=gen), dim=0) for _ in range(2))
    fields = []
    for _ in range(2):
        idx = torch.rand(b, hkv, t + spare, n, generator=gen).argsort(-1)[..., :s].to(torch.int16)
        coef = torch.randn(b, hkv, t + spare, s, generator=gen)
        counts = torch.where(torch.rand(b, hkv, t + spare, 1, generator=gen) < 0.5, s, 1 + (s - 1) // 2)
        coef = (coef * (torch.arange(s) < counts)).to(coef_dtype)
        if index_bits == 12:
            idx = pack_indices(idx)
        fields += [idx[:, :, :t], coef[:, :, :t]]
    return CompressedKV(*fields, dk, dv, index_bits=index_bits)


def _plain(codes: CompressedKV) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 dense keys and values of the codes, by ``omp.reconstruct`` (int16 indices)."""
    unpacked = codes.unpacked()
    keys = reconstruct(unpacked.key_indices, unpacked.key_coefs.float(), codes.key_dictionary)
    values = reconstruct(unpacked.value_indices, unpacked.value_coefs.float(), codes.value_dictionary)
    return keys.double(), values.double()


def _with_rotation(codes, angles, layout):
    """Attach the tokens' rotation: as a RopeTable holds it (fp16, cos and sin side by side in one buffer), as
    two separate fp32 tensors, or one batch row shared by every batch row."""
    if layout == "table":
        turns = torch.stack([angles.cos(), angles.sin()], dim=-1).half()  # (b, t, m/2, 2)
        rope = (turns[..., 0], turns[..., 1])
    elif layout == "separate":
        rope = (angles.cos().float(), angles.sin().float())
    else:
        rope = (angles[:1].cos().float(), angles[:1].sin().float())
    return dataclasses.replace(codes, key_rope=rope)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("index_bits,coef_dtype", FORMATS)
@pytest.mark.parametrize("layout", ["table", "separate", "broadcast"])
def test_rope_scores_equal_dense_rotated_keys(shape, index_bits, coef_dtype, layout):
    b, hkv, rows, t, m, n, s = shape
    gen = torch.Generator().manual_seed(t + m + s)
    codes = _stored(b, hkv, t, s, m, n, index_bits, coef_dtype, gen, spare=5)
    angles = torch.rand(b, t, m // 2, generator=gen, dtype=torch.float64) * 6.3
    if layout == "broadcast":
        angles = angles[:1].expand(b, t, m // 2)
    codes = _with_rotation(codes, angles, layout)
    cos, sin = codes.key_rope
    used = torch.atan2(sin.double(), cos.double())  # the angles as stored (fp16 rounds them)
    scale = (cos.double() ** 2 + sin.double() ** 2).sqrt()
    query = torch.randn(b, hkv, rows, m, generator=gen)
    keys, _ = _plain(codes)
    rotated = rotate_complex(keys, used.expand(b, t, m // 2)[:, None]) * torch.cat([scale, scale], -1)[:, None]
    expected = query.double() @ rotated.transpose(-1, -2)  # (b, hkv, rows, t)

    held = dataclasses.replace(codes, key_dictionary=codes.key_dictionary[pair_order(m)].t().contiguous().t())
    held = dataclasses.replace(held, key_pairs=True)
    atoms = reference.tile_atoms(held, keys=True)
    got = native.rope_scores(query[..., pair_order(m)].contiguous(), held, atoms)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("index_bits,coef_dtype", FORMATS)
def test_value_weights_equal_dense_weighted_values(shape, index_bits, coef_dtype):
    b, hkv, rows, t, m, n, s = shape
    gen = torch.Generator().manual_seed(t + n)
    codes = _stored(b, hkv, t, s, m, n, index_bits, coef_dtype, gen, spare=3)
    probs = torch.softmax(torch.randn(b, hkv, rows, t + 2, generator=gen), -1)[..., 1 : t + 1]  # strided rows
    _, values = _plain(codes)
    weights = native.value_weights(probs, codes)
    assert weights.shape == (b, hkv, rows, n) and weights.dtype == torch.float32
    got = weights.double() @ codes.value_dictionary.double().t()
    torch.testing.assert_close(got, probs.double() @ values, rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_the_thread_count():
    gen = torch.Generator().manual_seed(3)
    codes = _stored(1, 3, 1000, 8, 64, 256, 12, torch.float8_e4m3fn, gen)
    angles = torch.rand(1, 1000, 32, generator=gen, dtype=torch.float64)
    codes = _with_rotation(codes, angles, "table")
    query, probs = torch.randn(1, 3, 3, 64, generator=gen), torch.rand(1, 3, 3, 1000, generator=gen)
    atoms = reference.tile_atoms(codes, keys=True)
    previous = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append((native.rope_scores(query, codes, atoms), native.value_weights(probs, codes)))
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*runs):
        assert torch.equal(one, two)


@pytest.mark.parametrize("q_len", [1, 5])
def test_attention_with_and_without_the_kernels_agree(q_len, monkeypatch):
    """The decode path a layer runs (pre-RoPE pair-ordered codes, fp8, packed indices) gives the PyTorch
    path's output with the kernels, and the PyTorch path itself with ``LEXICO_NATIVE=0``."""
    gen = torch.Generator().manual_seed(q_len)
    codes = _stored(1, 3, 500, 8, 64, 256, 12, torch.float8_e4m3fn, gen)
    codes = _with_rotation(codes, torch.rand(1, 500, 32, generator=gen, dtype=torch.float64) * 6.3, "table")
    held = dataclasses.replace(codes, key_dictionary=codes.key_dictionary[pair_order(64)].t().contiguous().t())
    held = dataclasses.replace(held, key_pairs=True)
    query = torch.randn(1, 9 if q_len == 1 else 3, q_len, 64, generator=gen)
    key, value = torch.randn(1, 3, 20, 64, generator=gen), torch.randn(1, 3, 20, 64, generator=gen)
    calls = []
    for name in ("rope_scores", "value_weights"):
        original = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    fast = compressed_attention(query, key, value, held, None, scaling=0.125)
    assert calls == ["rope_scores", "value_weights"]
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert not native.available() and not native.usable(query, held)
    slow = compressed_attention(query, key, value, held, None, scaling=0.125)
    assert calls == ["rope_scores", "value_weights"]  # not called again
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_usable_only_where_the_kernels_apply():
    gen = torch.Generator().manual_seed(0)
    codes = _stored(1, 1, 4, 2, 16, 32, 16, torch.float32, gen)
    query = torch.randn(1, 1, 1, 16)
    assert native.usable(query, codes)
    odd = _stored(1, 1, 4, 2, 12, 32, 16, torch.float32, gen)  # head_dim not a multiple of 8
    assert not native.usable(torch.randn(1, 1, 1, 12), odd)
    wide = _stored(1, 1, 4, 2, 16, 32, 16, torch.float64, gen)  # a coefficient dtype the kernels do not read
    assert not native.usable(query, wide)
    assert not native.usable(query.to("meta"), codes)


def test_build_is_cached_by_source_flags_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.library() is not None
        built = list((tmp_path / "native").iterdir())
        assert len(built) == 1 and built[0].name.startswith("lexico_native-") and built[0].suffix == ".so"
        stamp = built[0].stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library() is not None and built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
        assert list((tmp_path / "native").iterdir()) == built  # no temporary file left behind
    finally:
        native.library.cache_clear()


def test_without_a_compiler_attention_falls_back_and_says_why(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=native.__name__):
            assert native.library() is None and not native.available()
        assert "no C compiler" in caplog.text and "PyTorch path runs instead" in caplog.text
        assert not (tmp_path / "native").exists()
    finally:
        native.library.cache_clear()


def test_a_failing_build_leaves_no_file_and_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    native.library.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=native.__name__):
            assert native.library() is None
        assert "native CPU kernels off" in caplog.text
        assert list((tmp_path / "native").iterdir()) == []
    finally:
        native.library.cache_clear()


@pytest.mark.parametrize("n", [4096, 1000, 13])
def test_select_atoms_is_the_first_argmax_of_the_unchosen_magnitudes(n):
    """Ties broken towards the first index, the atoms already chosen never picked, rows with a stride wider
    than the row, a length that is not a multiple of 8."""
    gen = torch.Generator().manual_seed(n)
    b, s = 37, 6
    wide = torch.randint(-3, 4, (b, n + 5), generator=gen).float()  # small integers: many ties, signs mixed
    corr = wide[:, :n]
    idx = torch.zeros(b, s, dtype=torch.int64)
    for k in range(s):
        expected = corr.abs()
        if k:
            expected.scatter_(1, idx[:, :k], -1.0)
        expected = expected.argmax(1)  # torch's argmax: the first maximum
        native.select_atoms(corr.clone(), idx, k)
        assert torch.equal(idx[:, k], expected)
        corr = torch.randint(-3, 4, (b, n), generator=gen).float()  # fresh correlations, as after a GEMM


@pytest.mark.parametrize("select_dtype", [torch.float32, torch.bfloat16])
def test_omp_with_and_without_the_native_selection_is_the_same(select_dtype, monkeypatch):
    """bf16 correlations are selected in place natively; the PyTorch code widens them to fp32 first (exact)."""
    from lexico_chat.omp import omp

    gen = torch.Generator().manual_seed(5)
    dictionary = torch.nn.functional.normalize(torch.randn(64, 1024, generator=gen), dim=0)
    vectors = torch.randn(300, 64, generator=gen)
    fast = omp(vectors, dictionary, 8, select_dtype=select_dtype)
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    slow = omp(vectors, dictionary, 8, select_dtype=select_dtype)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_select_atoms_refuses_indices_it_cannot_write():
    with pytest.raises(ValueError, match="int64"):
        native.select_atoms(torch.randn(2, 16), torch.zeros(2, 3, dtype=torch.int32), 0)


def test_select_atoms_reads_bf16_rows():
    gen = torch.Generator().manual_seed(7)
    corr = torch.randint(-4, 5, (9, 203), generator=gen).to(torch.bfloat16)
    idx = torch.zeros(9, 3, dtype=torch.int64)
    idx[:, 0] = corr.float().abs().argmax(1)
    expected = corr.float().abs().scatter(1, idx[:, :1], -1.0).argmax(1)
    native.select_atoms(corr, idx, 1)
    assert torch.equal(idx[:, 1], expected)


@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
@pytest.mark.parametrize("index_bits,coef_dtype", FORMATS[:2])
@pytest.mark.parametrize("repeat", [1, 3])
def test_rebuilt_tiles_equal_dense_vectors(key_space, index_bits, coef_dtype, repeat, monkeypatch):
    """``native.rebuild`` through ``reference.dense_tiles``: every tile, keys (rotated when pre-RoPE) and values,
    each KV head repeated for the query heads it serves, as the dense reconstruction gives them."""
    monkeypatch.setattr(reference, "TILE_TOKENS", 48)  # three tiles, the last one short
    gen = torch.Generator().manual_seed(repeat)
    b, hkv, t, m, n, s = 2, 2, 130, 64, 256, 8
    codes = _stored(b, hkv, t, s, m, n, index_bits, coef_dtype, gen, spare=4)
    angles = torch.rand(b, t, m // 2, generator=gen, dtype=torch.float64) * 6.3
    if key_space == "pre_rope":
        codes = _with_rotation(codes, angles, "table")
        held = codes.key_dictionary[pair_order(m)].t().contiguous().t()
        codes = dataclasses.replace(codes, key_dictionary=held, key_pairs=True)
    keys, values = _plain(codes)  # pre-RoPE: in pair order, as the held atoms
    if key_space == "pre_rope":  # each pair (k[2i], k[2i+1]) times cos_i + i sin_i, as stored (fp16)
        cos, sin = (x.double()[:, None] for x in codes.key_rope)
        turned = torch.view_as_complex(keys.unflatten(-1, (-1, 2)).contiguous()) * torch.complex(cos, sin)
        keys = torch.view_as_real(turned).flatten(-2)
    for part, expected in ((True, keys), (False, values)):
        tiles = list(reference.dense_tiles(codes, keys=part, repeat=repeat))
        assert [start for start, _ in tiles] == [0, 48, 96]
        got = torch.cat([tile for _, tile in tiles], dim=2)
        assert got.shape == (b, hkv * repeat, t, m) and got.is_contiguous()
        torch.testing.assert_close(got.double(), expected.repeat_interleave(repeat, dim=1), rtol=1e-5, atol=1e-4)
        monkeypatch.setenv(native.ENV_SWITCH, "0")
        slow = torch.cat([tile for _, tile in reference.dense_tiles(codes, keys=part, repeat=repeat)], dim=2)
        monkeypatch.delenv(native.ENV_SWITCH)
        torch.testing.assert_close(got, slow, rtol=1e-5, atol=1e-5)


def test_chunk_path_with_and_without_the_kernels_agree(monkeypatch):
    from lexico_chat.attention.chunked import chunk_attention
    from tests.test_chunked_attention import CASES, _inputs

    query, key, value, codes = _inputs(*CASES[0], "pre_rope_pairs", 12, torch.float8_e4m3fn)
    fast = chunk_attention(query, key, value, codes, None, scaling=0.125)
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    slow = chunk_attention(query, key, value, codes, None, scaling=0.125)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


def test_kernels_give_the_same_results_from_a_worker_thread():
    """The server generates in a worker thread, where OpenMP's default thread count applies; the kernels are
    given torch's count instead, and their tasks do not depend on it."""
    import threading

    gen = torch.Generator().manual_seed(8)
    codes = _with_rotation(
        _stored(1, 3, 700, 8, 64, 256, 12, torch.float8_e4m3fn, gen),
        torch.rand(1, 700, 32, dtype=torch.float64),
        "table",
    )
    query, atoms = torch.randn(1, 3, 3, 64, generator=gen), reference.tile_atoms(codes, keys=True)
    expected, got = native.rope_scores(query, codes, atoms), []
    worker = threading.Thread(target=lambda: got.append(native.rope_scores(query, codes, atoms)))
    worker.start()
    worker.join()
    assert torch.equal(got[0], expected)
