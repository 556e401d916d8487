"""Fused batched OMP in one Triton launch: the whole pursuit of a block of vectors in one program.

Same algorithm and results as ``lexico_chat.omp.omp`` (incremental QR of the chosen atoms, final
triangular solve), without a launch per step; ``omp`` calls it for CUDA vectors where
``lexico_chat.accel.triton_enabled`` and the selection dtype is one of ``SELECT_DTYPES``. A persistent
grid of programs takes blocks of BLOCK_B vectors; for each of the s steps a program streams the
dictionary in (m, BLOCK_N) tiles through ``tl.dot`` (bf16/fp16 operands, or fp32 ones as tf32x3, ~fp32
accuracy) keeping a running best |correlation| per vector, orthogonalises the chosen atom against the
previous directions (modified Gram-Schmidt; the directions Q and the triangular factor U live in a
per-program scratch area that stays in cache, as they do not fit in registers), and updates the
residual. The chosen-atom mask is applied only when some vector of the block picked an atom twice (its
residual is orthogonal to the chosen atoms, so that happens only when the residual is ~0): the unmasked
maximum is the masked one whenever it is not already chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lexico_chat.gpu.runtime import on_device, pow2, program_slots

__all__ = ["omp", "SELECT_DTYPES"]

SELECT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # atom-selection dtypes the kernel takes

# (vectors per program = the GEMM's M, dictionary tile width, warps) per selection precision: picked from the
# compiler's resource report for sm_90 (no spills inside the correlation loop); bf16/fp16 gets Hopper wgmma
CONFIG = {True: (64, 128, 8), False: (32, 64, 8)}


@triton.jit
def _best_atoms(r, chosen, k, dsel_ptr, n_atoms, dim, ds_sd, ds_sn, DP: tl.constexpr, SP: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, HALF: tl.constexpr, EMULATE: tl.constexpr,
                MASKED: tl.constexpr):  # fmt: skip
    """Index (BLOCK_B,) int32 of the atom with the largest |r · atom| (first on ties); with MASKED the ``k``
    atoms already chosen are skipped. EMULATE (the CPU interpreter, whose half-precision dot is wrong and
    which has no tf32): operands rounded to half precision where selected so, product in IEEE fp32."""
    d = tl.arange(0, DP)
    slot = tl.arange(0, SP)
    if EMULATE and HALF:
        a = _round_half(r, dsel_ptr.dtype.element_ty)
    else:
        a = r.to(dsel_ptr.dtype.element_ty)
    best = tl.full((BLOCK_B,), -3.0, tl.float32)
    best_j = tl.zeros((BLOCK_B,), tl.int32)
    for n0 in range(0, n_atoms, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        tile_mask = (d < dim)[:, None] & (n < n_atoms)[None, :]
        tile = tl.load(dsel_ptr + d[:, None] * ds_sd + n[None, :] * ds_sn, mask=tile_mask, other=0.0)
        if EMULATE:
            corr = tl.dot(a, tile.to(tl.float32), input_precision="ieee")
        elif HALF:
            corr = tl.dot(a, tile)  # (BLOCK_B, BLOCK_N) fp32 accumulation
        else:
            corr = tl.dot(a, tile, input_precision="tf32x3")  # ~fp32 accuracy on tensor cores
        score = tl.abs(corr)
        if MASKED:
            for i in range(k):
                taken = tl.sum(tl.where(slot[None, :] == i, chosen, 0), axis=1)  # (BLOCK_B,)
                score = tl.where(n[None, :] == taken[:, None], -1.0, score)
        score = tl.where((n < n_atoms)[None, :], score, -2.0)
        tile_best = tl.max(score, axis=1)
        tile_j = tl.argmax(score, axis=1, tie_break_left=True) + n0
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_j = tl.where(better, tile_j, best_j)
    return best_j


@triton.jit
def _round_half(x, dtype: tl.constexpr):
    """fp32 ``x`` rounded to ``dtype`` (nearest even, as on the GPU), kept in fp32."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def _orthogonalise(atom, q_rows, k, DP: tl.constexpr, SP: tl.constexpr, BLOCK_B: tl.constexpr):
    """Modified Gram-Schmidt of ``atom`` (BLOCK_B, DP) against the k directions stored at ``q_rows``
    ((BLOCK_B,) pointers to each vector's (SP, DP) rows): the residual and the projections (BLOCK_B, SP)."""
    d = tl.arange(0, DP)
    slot = tl.arange(0, SP)
    proj = tl.zeros((BLOCK_B, SP), tl.float32)
    for i in range(k):
        q_i = tl.load(q_rows[:, None] + i * DP + d[None, :])  # (BLOCK_B, DP)
        p = tl.sum(q_i * atom, axis=1)
        atom -= p[:, None] * q_i
        proj = tl.where(slot[None, :] == i, p[:, None], proj)
    return atom, proj


@triton.jit
def _back_substitute(u_rows, z, S: tl.constexpr, SP: tl.constexpr):
    """Solve U c = z per vector; U upper triangular, row i of vector b at u_rows[b] + i * SP; z (BLOCK_B, SP)."""
    slot = tl.arange(0, SP)
    c = tl.zeros_like(z)
    for t in range(S):
        i = S - 1 - t
        row = tl.load(u_rows[:, None] + i * SP + slot[None, :], mask=(slot < S)[None, :], other=0.0)
        diag = tl.sum(tl.where(slot[None, :] == i, row, 0.0), axis=1)
        z_i = tl.sum(tl.where(slot[None, :] == i, z, 0.0), axis=1)
        rest = tl.sum(tl.where(slot[None, :] > i, row * c, 0.0), axis=1)
        c = tl.where(slot[None, :] == i, ((z_i - rest) / diag)[:, None], c)
    return c


@triton.jit
def _omp_kernel(y_ptr, dsel_ptr, d_ptr, idx_ptr, coef_ptr, scratch_ptr, n_vec, n_atoms, dim, tol2, y_sb, y_sd,
                ds_sd, ds_sn, d_sd, d_sn, S: tl.constexpr, SP: tl.constexpr, DP: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, HALF: tl.constexpr, EMULATE: tl.constexpr):  # fmt: skip
    d = tl.arange(0, DP)
    slot = tl.arange(0, SP)
    lane = tl.arange(0, BLOCK_B)
    q_rows = scratch_ptr + (tl.program_id(0) * BLOCK_B + lane) * (SP * DP + SP * SP)  # per vector: Q (SP, DP)
    u_rows = q_rows + SP * DP  # then U (SP, SP)
    for block in range(tl.program_id(0), tl.cdiv(n_vec, BLOCK_B), tl.num_programs(0)):
        rows = block * BLOCK_B + lane
        row_ok = rows < n_vec
        y_mask = row_ok[:, None] & (d < dim)[None, :]
        r = tl.load(y_ptr + rows[:, None] * y_sb + d[None, :] * y_sd, mask=y_mask, other=0.0).to(tl.float32)
        floor = tol2 * tl.sum(r * r, axis=1)  # squared residual norm at which a vector stops
        z = tl.zeros((BLOCK_B, SP), tl.float32)  # residual components along the directions
        chosen = tl.full((BLOCK_B, SP), -1, tl.int32)
        tl.debug_barrier()  # the previous block's reads of the scratch area are done
        for k in range(S):
            j = _best_atoms(r, chosen, k, dsel_ptr, n_atoms, dim, ds_sd, ds_sn, DP, SP, BLOCK_B, BLOCK_N, HALF,
                            EMULATE, False)  # fmt: skip
            if tl.max(tl.sum((chosen == j[:, None]).to(tl.int32), axis=1), axis=0) > 0:  # a residual is ~0
                j = _best_atoms(r, chosen, k, dsel_ptr, n_atoms, dim, ds_sd, ds_sn, DP, SP, BLOCK_B, BLOCK_N, HALF,
                                EMULATE, True)  # fmt: skip
            chosen = tl.where(slot[None, :] == k, j[:, None], chosen)
            atom = tl.load(d_ptr + j[:, None] * d_sn + d[None, :] * d_sd, mask=(d < dim)[None, :], other=0.0)
            resid, proj = _orthogonalise(atom, q_rows, k, DP, SP, BLOCK_B)
            norm = tl.sqrt(tl.sum(resid * resid, axis=1))
            live = (norm > 1e-6) & (tl.sum(r * r, axis=1) > floor)
            q_k = resid * tl.where(live, 1.0 / tl.maximum(norm, 1e-10), 0.0)[:, None]
            z_k = tl.sum(q_k * r, axis=1)
            column = tl.where(slot[None, :] < k, proj * live.to(tl.float32)[:, None], 0.0)
            column = tl.where(slot[None, :] == k, tl.where(live, norm, 1.0)[:, None], column)
            tl.store(u_rows[:, None] + slot[None, :] * SP + k, column)  # column k of U
            tl.store(q_rows[:, None] + k * DP + d[None, :], q_k)
            tl.debug_barrier()  # direction k visible to every thread of the program
            z = tl.where(slot[None, :] == k, z_k[:, None], z)
            r = r - z_k[:, None] * q_k
        coef = _back_substitute(u_rows, z, S, SP)
        out = rows[:, None] * S + slot[None, :]
        out_mask = row_ok[:, None] & (slot < S)[None, :]
        tl.store(idx_ptr + out, chosen.to(tl.int16), mask=out_mask)
        tl.store(coef_ptr + out, coef, mask=out_mask)


def omp(
    vectors: torch.Tensor,
    dictionary: torch.Tensor,
    sparsity: int,
    *,
    tol: float = 0.0,
    select_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse-code ``vectors`` over ``dictionary`` with OMP in one fused launch (same contract as
    ``lexico_chat.omp.omp``, which validates the arguments). No ``chunk``: working memory is a scratch area
    of (s·m + s²) floats for each vector in flight (one block per SM: ~80 MB at s=16, m=128 on 132 SMs,
    a few MB for the cache's windows).

    Parameters
    ----------
    vectors : (B, m) any float dtype, any strides.
    dictionary : (m, N) unit-norm columns, any float dtype and strides, on the same device.
    sparsity : 1 <= s <= min(m, N).
    tol : relative residual at which a vector stops gaining atoms.
    select_dtype : float32 (tf32x3 on the GPU: fp32 accuracy), bfloat16 or float16 (operands rounded,
        products accumulated in fp32: unlike the PyTorch path the correlations are not rounded to bf16).

    Returns
    -------
    indices : (B, s) int16, distinct per vector.
    coefs : (B, s) float32 least-squares coefficients.
    """
    if select_dtype not in SELECT_DTYPES:
        raise ValueError(f"`select_dtype` must be one of {list(SELECT_DTYPES)}, got {select_dtype}")
    n, m = vectors.shape
    n_atoms = dictionary.shape[1]
    d32 = dictionary.to(torch.float32)
    dsel = d32 if select_dtype == torch.float32 else dictionary.to(select_dtype)
    indices = torch.empty(n, sparsity, dtype=torch.int16, device=vectors.device)
    coefs = torch.empty(n, sparsity, dtype=torch.float32, device=vectors.device)
    sp, dp = pow2(sparsity), pow2(m, 16)
    half = select_dtype != torch.float32
    block_b, block_n, warps = CONFIG[half]
    # persistent grid, one program per SM (8 warps at up to 255 registers: one fits); bounds the scratch area
    programs = max(1, min(triton.cdiv(n, block_b), program_slots(vectors.device) // 2))
    scratch = torch.empty(programs * block_b * (sp * dp + sp * sp), dtype=torch.float32, device=vectors.device)
    with on_device(vectors.device):
        _omp_kernel[(programs,)](
            vectors, dsel, d32, indices, coefs, scratch, n, n_atoms, m, float(tol) ** 2, *vectors.stride(),
            *dsel.stride(), *d32.stride(), S=sparsity, SP=sp, DP=dp, BLOCK_B=block_b, BLOCK_N=block_n, HALF=half,
            EMULATE=not vectors.is_cuda, num_warps=warps, num_stages=2,
        )  # fmt: skip
    return indices, coefs
