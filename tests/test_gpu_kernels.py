"""Triton kernels (``lexico_chat.attention.triton_decode``, ``lexico_chat.gpu.pursuit``) against the PyTorch
path, on CPU through Triton's interpreter; the problems come from ``tests/kernel_cases.py``.

TRITON_INTERPRET=1 must be set before triton is first imported (triton's own library functions are
``@jit`` functions, made interpreted or compiled at import) and transformers imports triton early. So,
unless this process already runs with it, one test reruns this file under pytest in a subprocess with
TRITON_INTERPRET=1, where the kernel tests below are defined and run.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


if not INTERPRETED:

    def test_kernels_under_the_triton_interpreter():
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", __file__]
        run = subprocess.run(command, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


if INTERPRETED:
    from lexico_chat import accel
    from lexico_chat.attention.dispatch import decode_eligible
    from lexico_chat.gpu.pursuit import omp as fused_omp
    from lexico_chat.omp import omp, reconstruct
    from tests.kernel_cases import TOLERANCE, check_decode, check_omp, decode_case, unit_dictionary

    DECODE_CASES = [
        # compressed, buffer, batch, kv_heads, groups, head_dim, sparsity, dtype, coef_dtype, softcap, mask
        (1, 0, 1, 2, 2, 16, 4, torch.float32, torch.float8_e4m3fn, None, False),
        (17, 5, 1, 2, 3, 16, 4, torch.bfloat16, torch.float8_e4m3fn, None, False),  # GQA 3 (padded to 4)
        (100, 5, 2, 2, 2, 32, 8, torch.float16, torch.float8_e4m3fn, None, False),
        (100, 0, 1, 1, 4, 16, 3, torch.float32, torch.float16, 3.0, False),  # s not a power of two, softcap
        (17, 5, 2, 2, 1, 24, 4, torch.bfloat16, torch.float32, None, True),  # head_dim 24 (padded), MHA, mask
        (0, 5, 1, 2, 2, 16, 4, torch.float16, torch.float8_e4m3fn, 5.0, True),  # buffer only
        (130, 5, 1, 2, 2, 16, 4, torch.float32, torch.float8_e4m3fn, None, True),  # three blocks of codes
        (300, 5, 1, 1, 2, 16, 4, torch.float32, torch.float8_e4m3fn, None, False),  # several blocks per split
    ]

    @pytest.mark.parametrize("tc,tb,b,hkv,g,m,s,dtype,coef_dtype,softcap,mask", DECODE_CASES)
    @pytest.mark.parametrize("splits", [None, 2])
    def test_decode_matches_pytorch_path(tc, tb, b, hkv, g, m, s, dtype, coef_dtype, softcap, mask, splits):
        shape = dict(batch=b, kv_heads=hkv, groups=g, head_dim=m, sparsity=s, compressed=tc, buffer=tb)
        case = decode_case(
            **shape, dtype=dtype, coef_dtype=coef_dtype, softcap=softcap, mask=mask, seed=tc + 7 * tb + m
        )
        # the interpreter rounds fp32 -> bf16 toward zero (GPUs round to nearest), hence bf16's wider margin
        assert check_decode(case, splits=splits) < TOLERANCE[dtype]

    ROPE_CASES = [
        # compressed, buffer, batch, kv_heads, groups, head_dim, sparsity, dtype, coef_dtype, mask
        (17, 5, 1, 2, 3, 16, 4, torch.float32, torch.float8_e4m3fn, False),  # GQA 3 (padded to 4)
        (130, 0, 2, 1, 2, 32, 8, torch.float16, torch.float8_e4m3fn, True),  # batch 2, three blocks, no buffer
        (70, 5, 1, 3, 3, 64, 5, torch.bfloat16, torch.float16, False),  # the default model's head layout, odd s
    ]

    @pytest.mark.parametrize("tc,tb,b,hkv,g,m,s,dtype,coef_dtype,mask", ROPE_CASES)
    @pytest.mark.parametrize("key_space", ["pre_rope", "pre_rope_pairs"])
    @pytest.mark.parametrize("splits", [None, 2])
    def test_pre_rope_decode_matches_pytorch_path(tc, tb, b, hkv, g, m, s, dtype, coef_dtype, mask, key_space, splits):
        shape = dict(batch=b, kv_heads=hkv, groups=g, head_dim=m, sparsity=s, compressed=tc, buffer=tb)
        case = decode_case(**shape, dtype=dtype, coef_dtype=coef_dtype, mask=mask, key_space=key_space, seed=tc + m)
        assert case.compressed.key_rope is not None
        assert check_decode(case, splits=splits) < TOLERANCE[dtype]

    def test_decode_additive_float_mask():
        case = decode_case(compressed=40, buffer=5, batch=2, mask=True, seed=3)
        bias = torch.zeros(case.mask.shape).masked_fill_(~case.mask, -1e4)
        assert check_decode(dataclasses.replace(case, mask=bias)) < TOLERANCE[torch.float32]

    def test_kernels_decline_on_cpu_and_when_switched_off():
        case = decode_case()
        assert accel.triton_available()
        assert not decode_eligible(case.query, case.key, case.compressed, None, None)  # CPU tensors: PyTorch path
        assert not accel.triton_enabled(torch.randn(4, 16))  # the OMP's CPU vectors: PyTorch path
        with accel.pytorch_path():
            assert os.environ[accel.ENV_SWITCH] == "0"
        assert os.environ.get(accel.ENV_SWITCH) != "0"

    def _omp_inputs(n, m, atoms, seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, m, generator=gen), unit_dictionary(m, atoms, gen)

    OMP_CASES = [(50, 16, 64, 1), (50, 16, 64, 4), (37, 32, 96, 7), (20, 16, 64, 16), (300, 16, 64, 4)]

    @pytest.mark.parametrize("n,m,atoms,s", OMP_CASES)  # 300: several blocks per program of the persistent grid
    def test_omp_matches_pytorch_path(n, m, atoms, s):
        x, d = _omp_inputs(n, m, atoms, seed=s)
        report = check_omp(x, d, s)
        assert report["agreement"] >= 0.98 and report["distinct"] == 1.0
        assert report["coef_diff"] < 1e-4
        assert abs(report["error"] - report["error_torch"]) < 1e-4

    def test_omp_bf16_selection_is_as_good_as_pytorch():
        x, d = _omp_inputs(64, 32, 128, seed=1)
        report = check_omp(x, d, 8, select_dtype=torch.bfloat16)
        # torch rounds the correlations to bf16 (ties break by index); the kernel keeps them in fp32
        assert report["agreement"] >= 0.6 and report["distinct"] == 1.0
        assert report["error"] <= report["error_torch"] * 1.02 + 1e-4

    def test_omp_tolerance_stops_early():
        x, d = _omp_inputs(40, 16, 64, seed=2)
        report = check_omp(x, d, 8, tol=0.4)
        assert report["agreement"] >= 0.95 and report["coef_diff"] < 1e-4
        _, coef = fused_omp(x, d, 8, tol=0.4)
        assert (coef == 0).any(dim=1).float().mean() > 0.5  # most vectors stopped before 8 atoms

    def test_omp_degenerate_vectors_keep_distinct_atoms():
        _, d = _omp_inputs(1, 16, 64, seed=4)
        x = torch.stack([torch.zeros(16), d[:, 5], 2 * d[:, 9] - d[:, 30]])
        idx, coef = fused_omp(x, d, 4)
        ref_idx, _ = omp(x, d, 4)
        assert torch.equal(idx[0], ref_idx[0]) and torch.equal(coef[0], torch.zeros(4))  # zero vector: atoms 0..3
        for row in range(3):
            assert len(set(idx[row].tolist())) == 4
        assert torch.allclose(reconstruct(idx, coef, d), x, atol=1e-5)
        assert idx[1, 0] == 5 and abs(coef[1, 0] - 1) < 1e-5

    def test_omp_strided_inputs():
        x, d = _omp_inputs(30, 16, 64, seed=5)
        wide = torch.zeros(30, 40)
        wide[:, ::2][:, :16] = x  # vectors with a column stride of 2
        dv = d.t().contiguous().t()  # (m, N) view of (N, m), as the cache stores value atoms
        report = check_omp(wide[:, ::2][:, :16], dv, 5)
        assert report["agreement"] >= 0.98 and report["coef_diff"] < 1e-4
