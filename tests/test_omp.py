"""Batched OMP against independent references (scikit-learn and a plain per-vector OMP)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp_gram

from lexico_chat import omp as omp_module
from lexico_chat.omp import fastest_select_dtype, first_argmax, omp, reconstruct, select_dtype_for


def _problem(m, n, s, batch, seed, noise=0.01):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(m, n, generator=gen)
    d /= d.norm(dim=0)
    support = torch.stack([torch.randperm(n, generator=gen)[:s] for _ in range(batch)])
    coef = torch.randn(batch, s, generator=gen).sign() * (0.5 + torch.rand(batch, s, generator=gen))
    x = (d.t()[support] * coef.unsqueeze(-1)).sum(1) + noise * torch.randn(batch, m, generator=gen)
    return d, x


def _reference_omp(x: np.ndarray, d: np.ndarray, s: int, tol: float = 0.0):
    """Textbook OMP: argmax correlation, least squares on the support, repeat."""
    support, r = [], x.copy()
    coef = np.zeros(0)
    for _ in range(s):
        if np.linalg.norm(r) <= tol * np.linalg.norm(x):
            break
        corr = np.abs(d.T @ r)
        corr[support] = -1
        support.append(int(corr.argmax()))
        coef, *_ = np.linalg.lstsq(d[:, support], x, rcond=None)
        r = x - d[:, support] @ coef
    return support, coef


@pytest.mark.parametrize("m,n,s", [(16, 64, 5), (64, 256, 8), (64, 1024, 16)])
def test_matches_sklearn(m, n, s):
    d, x = _problem(m, n, s, batch=200, seed=m + n + s)
    idx, coef = omp(x, d, s, chunk=64)
    gram = (d.t() @ d).double().numpy()
    ref = orthogonal_mp_gram(gram, (x.double() @ d.double()).numpy().T, n_nonzero_coefs=s)  # (N, B)
    dense = torch.zeros(x.shape[0], n, dtype=torch.float64)
    dense.scatter_(1, idx.long(), coef.double())
    ref_t = torch.from_numpy(ref.T)
    assert torch.equal(dense != 0, ref_t != 0), "supports differ"
    torch.testing.assert_close(dense, ref_t, atol=1e-4, rtol=1e-4)


def test_matches_plain_omp_with_tolerance():
    d, x = _problem(32, 128, 6, batch=60, seed=3, noise=0.05)
    idx, coef = omp(x, d, 12, tol=0.1, chunk=16)
    for i in range(x.shape[0]):
        support, ref_coef = _reference_omp(x[i].double().numpy(), d.double().numpy(), 12, tol=0.1)
        k = len(support)
        assert idx[i, :k].tolist() == support
        np.testing.assert_allclose(coef[i, :k].double().numpy(), ref_coef, atol=1e-4)
        assert torch.all(coef[i, k:] == 0), "slots after convergence must carry zero coefficients"


def test_distinct_atoms_and_degenerate_vectors():
    d, x = _problem(16, 40, 4, batch=8, seed=1)
    x[0] = 0  # zero vector
    x[1] = d[:, 7]  # exactly one atom
    x[2] = 3 * d[:, 5] - 2 * d[:, 9]  # exactly two atoms
    idx, coef = omp(x, d, 16)
    assert torch.isfinite(coef).all()
    for row in idx:
        assert len(set(row.tolist())) == 16, "an atom was chosen twice"
    assert torch.all(coef[0] == 0)
    assert idx[1, 0] == 7 and torch.allclose(coef[1], torch.tensor([1.0] + [0.0] * 15), atol=1e-5)
    rec = reconstruct(idx, coef, d)
    torch.testing.assert_close(rec[:3], x[:3], atol=1e-5, rtol=0)


def test_chunking_and_dtypes_do_not_change_codes():
    d, x = _problem(64, 512, 8, batch=300, seed=5)
    ref_idx, ref_coef = omp(x, d, 8, chunk=512)
    idx, coef = omp(x, d, 8, chunk=7)
    assert torch.equal(idx, ref_idx) and torch.allclose(coef, ref_coef, atol=1e-6)
    idx16, coef16 = omp(x.to(torch.bfloat16), d, 8)  # input dtype: cast, accumulation in fp32
    assert idx16.dtype == torch.int16 and coef16.dtype == torch.float32


def test_bf16_selection_keeps_quality():
    d, x = _problem(64, 1024, 8, batch=2000, seed=9, noise=0.2)
    errs = []
    for dtype in (torch.float32, torch.bfloat16):
        idx, coef = omp(x, d, 8, select_dtype=dtype)
        errs.append(((x - reconstruct(idx, coef, d)).norm(dim=1) / x.norm(dim=1)).mean())
    assert errs[1] <= errs[0] * 1.01


@pytest.mark.parametrize("bf16_seconds,expected", [(1.0, torch.float32), (0.4, torch.bfloat16), (0.6, torch.float32)])
def test_auto_selection_takes_bf16_only_where_it_is_clearly_faster(monkeypatch, bf16_seconds, expected):
    """The "auto" selection is bf16 on CUDA; on a CPU with bf16 instructions only when its timed OMP is BF16_GAIN
    (2x) faster than fp32; without them fp32, and nothing is timed."""
    clock = iter([0.0, bf16_seconds, 0.0, bf16_seconds, 0.0, bf16_seconds, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    monkeypatch.setattr(omp_module.time, "perf_counter", lambda: next(clock))
    omp_module._probed_select_dtype.cache_clear()
    try:
        monkeypatch.setattr(omp_module, "_bf16_instructions", lambda: True)
        assert fastest_select_dtype("cpu") == expected
        omp_module._probed_select_dtype.cache_clear()
        monkeypatch.setattr(omp_module, "_bf16_instructions", lambda: False)
        assert fastest_select_dtype("cpu") == torch.float32  # emulated bf16: no probe (the clock is used up)
    finally:
        omp_module._probed_select_dtype.cache_clear()
    assert fastest_select_dtype("cuda") == torch.bfloat16 and fastest_select_dtype("meta") == torch.float32
    assert select_dtype_for("float16", "cpu") == torch.float16


@pytest.mark.parametrize("n", [100, 1024, 4096])
def test_blocked_argmax_is_argmax_ties_included(n):
    """The first index of each row's maximum, as ``argmax`` gives it, also when the maximum repeats
    (within a block, across blocks, at both ends)."""
    gen = torch.Generator().manual_seed(n)
    score = torch.randint(0, 50, (64, n), generator=gen).float()  # many ties
    score[0] = 7.0
    score[1, [-1, 3]] = 99.0
    score[2, [n - 1, n // 2]] = 99.0
    assert torch.equal(first_argmax(score), score.argmax(1))
    assert torch.equal(first_argmax(score[:, :0].new_zeros(0, n)), torch.zeros(0, dtype=torch.long))


def test_identity_dictionary_is_lossless():
    x = torch.randn(50, 64)
    idx, coef = omp(x, torch.eye(64), 64)
    torch.testing.assert_close(reconstruct(idx, coef, torch.eye(64)), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "shape,s,match",
    [((10, 8), 3, "shape"), ((10, 16), 0, "sparsity"), ((10, 16), 17, "sparsity")],
)
def test_bad_arguments(shape, s, match):
    d = torch.eye(16)
    with pytest.raises(ValueError, match=match):
        omp(torch.randn(*shape), d, s)
