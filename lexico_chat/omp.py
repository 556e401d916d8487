"""Batched Orthogonal Matching Pursuit.

One code path for CPU and CUDA (where ``lexico_chat.accel.triton_enabled``, CUDA vectors go to the fused
Triton kernel of ``lexico_chat.gpu.pursuit`` instead). Each step picks, for every vector of a chunk at
once, the atom most correlated with the residual, orthogonalises it against the atoms already chosen
(an incremental QR of the chosen atoms, i.e. an incremental Cholesky factor ``U`` of their Gram matrix,
``UᵀU = D_Iᵀ D_I``) and removes its component from the residual. Correlations are refreshed by one GEMM
``r @ D`` per step; the coefficients on the chosen atoms come from one batched triangular solve at
the end. No host syncs, no per-vector Python loop, working memory bounded by ``chunk``.
"""

from __future__ import annotations

import functools
import time

import torch

from lexico_chat import native
from lexico_chat.accel import triton_enabled

__all__ = [
    "omp",
    "omp_factors",
    "reconstruct",
    "first_argmax",
    "fastest_select_dtype",
    "select_dtype_for",
    "BF16_GAIN",
    "CPU_CHUNK_ELEMENTS",
    "CPU_CHUNK_ROWS",
    "MAX_ATOMS",
]

BF16_GAIN = 2.0  # bf16 selection (near-exact OMP) only where its GEMM is clearly faster than exact fp32

MAX_ATOMS = 32767  # atom indices are stored as int16
CPU_CHUNK_ROWS = 1536  # vectors coded at once on CPU ...
CPU_CHUNK_ELEMENTS = 6 << 20  # ... and at most this many correlations (24 MB of fp32)
_EPS = 1e-10


def omp(
    vectors: torch.Tensor,
    dictionary: torch.Tensor,
    sparsity: int,
    *,
    tol: float = 0.0,
    chunk: int | None = None,
    select_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse-code ``vectors`` over ``dictionary`` with OMP.

    Parameters
    ----------
    vectors : (B, m) float tensor, any float dtype (accumulation is fp32).
    dictionary : (m, N) float tensor with unit-norm columns, on the same device.
    sparsity : number of atoms per vector, 1 <= sparsity <= min(m, N).
    tol : optional relative tolerance; a vector stops gaining atoms once
        ``||r|| <= tol * ||x||`` (its remaining slots get coefficient 0).
    chunk : vectors encoded at once; working memory is O(chunk * (N + s * m)). Default on CPU: the vectors
        in equal chunks of at most ``CPU_CHUNK_ROWS`` (and ``CPU_CHUNK_ELEMENTS / N``) rows. On 2 cores, 6,144
        vectors at (64, 4096, 8) coded at 34k vectors/s in chunks of 512, 40k in chunks of 1,536 and 21k in
        one chunk; at N = 1024, 72k, 90k and 88k; 16384 on GPUs (enough rows to fill the device).
    select_dtype : dtype of the correlations used only to *choose* atoms (float32: exact OMP;
        bfloat16: several times faster on CPUs and GPUs with bf16 matrix units, and may pick a
        near-best atom where two correlations tie within bf16 precision). Coefficients are always
        least-squares in fp32 on the chosen atoms.

    Returns
    -------
    indices : (B, s) int16, distinct atom indices per vector.
    coefs : (B, s) float32 least-squares coefficients on those atoms.
    """
    _check(vectors, dictionary, sparsity)
    if triton_enabled(vectors) and vectors.shape[0]:  # one fused Triton launch (optional dependency)
        from lexico_chat.gpu import pursuit

        if select_dtype in pursuit.SELECT_DTYPES:
            return pursuit.omp(vectors, dictionary, sparsity, tol=tol, select_dtype=select_dtype)
    n = vectors.shape[0]
    indices = torch.empty(n, sparsity, dtype=torch.int16, device=vectors.device)
    coefs = torch.empty(n, sparsity, dtype=torch.float32, device=vectors.device)
    for rows, idx, u, z in _chunks(vectors, dictionary, sparsity, tol, chunk, select_dtype):
        indices[rows] = idx.to(torch.int16)
        coefs[rows] = _solve(u, z)
    return indices, coefs


def omp_factors(
    vectors: torch.Tensor, dictionary: torch.Tensor, sparsity: int, *, select_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OMP's chosen atoms with the factors every prefix of them is solved from (the PyTorch path, any device).

    The first k atoms OMP picks are the atoms it picks at sparsity k, and the squared residual falls by
    ``z[:, k] ** 2`` at step k; ``lexico_chat.adaptive`` reads both to give vectors different numbers of atoms.

    Parameters
    ----------
    vectors : (B, m) float; dictionary : (m, N) unit-norm atoms; sparsity : atoms per vector (as ``omp``).
    select_dtype : as ``omp``.

    Returns
    -------
    indices : (B, s) int16 atoms in the order chosen.
    u : (B, s, s) float32 upper-triangular factor of the chosen atoms' Gram (``UᵀU = D_Iᵀ D_I``).
    z : (B, s) float32 residual components along the orthonormalised atoms: ``U c = z`` gives the coefficients.
    """
    _check(vectors, dictionary, sparsity)
    n, device = vectors.shape[0], vectors.device
    indices = torch.empty(n, sparsity, dtype=torch.int16, device=device)
    u = torch.empty(n, sparsity, sparsity, dtype=torch.float32, device=device)
    z = torch.empty(n, sparsity, dtype=torch.float32, device=device)
    for rows, idx, uk, zk in _chunks(vectors, dictionary, sparsity, 0.0, None, select_dtype):
        indices[rows], u[rows], z[rows] = idx.to(torch.int16), uk, zk
    return indices, u, z


def _check(vectors: torch.Tensor, dictionary: torch.Tensor, sparsity: int) -> None:
    m, n_atoms = dictionary.shape
    if vectors.ndim != 2 or vectors.shape[1] != m:
        raise ValueError(f"`vectors` must have shape (B, {m}) to match the dictionary, got {tuple(vectors.shape)}")
    if not 1 <= sparsity <= min(m, n_atoms):
        raise ValueError(
            f"`sparsity` must be in [1, {min(m, n_atoms)}] for a ({m}, {n_atoms}) dictionary, got {sparsity}"
        )
    if n_atoms > MAX_ATOMS:
        raise ValueError(f"dictionaries may have at most {MAX_ATOMS} atoms (int16 indices), got {n_atoms}")


def _chunks(vectors, dictionary, sparsity: int, tol: float, chunk: int | None, select_dtype: torch.dtype):
    """(row slice, indices, U, z) of ``_omp_chunk`` over ``vectors`` in chunks (default: ``_cpu_chunk`` on CPU,
    16384 elsewhere)."""
    n, n_atoms = vectors.shape[0], dictionary.shape[1]
    if chunk is None:
        chunk = _cpu_chunk(n, n_atoms) if vectors.device.type == "cpu" else 16384
    d = dictionary.to(torch.float32)
    dt, d_sel = d.t().contiguous(), d.to(select_dtype)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        yield (rows, *_omp_chunk(vectors[rows].to(torch.float32), d_sel, dt, sparsity, tol))


def _cpu_chunk(n: int, n_atoms: int) -> int:
    """Rows per chunk on CPU: ``n`` split evenly into the fewest chunks within the two caps."""
    cap = max(64, min(CPU_CHUNK_ROWS, CPU_CHUNK_ELEMENTS // n_atoms))
    pieces = max(1, -(-n // cap))
    return max(1, -(-n // pieces))


def select_dtype_for(name: str, device: torch.device | str) -> torch.dtype:
    """The selection dtype a setting names on ``device``: "auto" is ``fastest_select_dtype(device)``."""
    return fastest_select_dtype(device) if name == "auto" else getattr(torch, name)


def fastest_select_dtype(device: torch.device | str) -> torch.dtype:
    """The atom-selection dtype "auto" stands for on ``device``: bfloat16 on CUDA (bf16 matrix units, the
    fused pursuit), else bfloat16 only on a CPU with bf16 instructions (AVX512-BF16 or AMX) where a short timed
    OMP codes ``BF16_GAIN`` times faster with it, else float32: exact OMP. Without bf16 instructions bf16 GEMMs
    are emulated, about a hundred times slower than fp32 (0.5 against 60 GFLOP/s on an AVX2 machine), and no
    probe runs. With them the probe times OMP itself: on a 2-core AMX machine bf16 GEMMs were 4.5x faster but
    bf16-selection OMP coded 38.1k vectors/s against 38.5k with the PyTorch selection (its passes over the
    correlations dominate); with the native selection (``lexico_chat.native``) 68k against 45-49k at (64, 4096,
    8), while the probe's own shape gains 1.05-1.25x, so fp32 stays (a probe of the bare GEMM at a small shape
    crossed the threshold in some runs and not in others).
    Probed once per device type per process (about 40 ms where it runs)."""
    kind = torch.device(device).type
    return torch.bfloat16 if kind == "cuda" else _probed_select_dtype(kind)


def _bf16_instructions() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if callable(check))


@functools.cache
def _probed_select_dtype(kind: str) -> torch.dtype:
    if kind != "cpu" or not _bf16_instructions():
        return torch.float32
    gen = torch.Generator().manual_seed(0)
    x, d = torch.randn(512, 64, generator=gen), torch.randn(64, 1024, generator=gen)
    d = d / d.norm(dim=0)

    def best(dtype: torch.dtype) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            omp(x, d, 8, select_dtype=dtype)
            times.append(time.perf_counter() - start)
        return min(times)

    return torch.bfloat16 if best(torch.bfloat16) * BF16_GAIN <= best(torch.float32) else torch.float32


def _omp_chunk(
    y: torch.Tensor, d_sel: torch.Tensor, dt: torch.Tensor, s: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # y: (b, m) fp32; d_sel: (m, N) in the selection dtype; dt: (N, m) fp32
    b, m = y.shape
    q = y.new_zeros(b, s, m)  # orthonormal directions of the chosen atoms
    u = y.new_zeros(b, s, s)  # upper-triangular Cholesky factor of the chosen atoms' Gram
    z = y.new_zeros(b, s)  # residual components along q
    idx = torch.zeros(b, s, dtype=torch.long, device=y.device)
    floor = (tol * tol) * (y * y).sum(1)  # (b,) squared residual norm at which a vector stops
    r = y.clone()
    fused = native.selects(y.device, d_sel.dtype)  # CPU: |c|, mask and first argmax in one pass
    held = d_sel.dtype if fused else torch.float32  # the natively selected correlations stay in the GEMM's dtype
    corr = y.new_empty(b, d_sel.shape[1], dtype=held)  # (b, N), one buffer for every step
    if fused:
        _correlate_and_select(y, d_sel, corr, idx, 0)
    else:
        corr = _correlate(y, d_sel, corr)
    for k in range(s):
        if fused:
            j = idx[:, k]
        else:
            score = corr.abs_()
            if k:
                score.scatter_(1, idx[:, :k], -1.0)  # never pick an atom twice
            j = first_argmax(score)  # (b,)
            idx[:, k] = j
        atom = dt[j]  # (b, m)
        proj = torch.bmm(q[:, :k], atom.unsqueeze(2)).squeeze(2)  # (b, k)
        resid = atom - torch.bmm(proj.unsqueeze(1), q[:, :k]).squeeze(1)  # (b, m)
        norm = resid.norm(dim=1)  # (b,)
        live = (norm > 1e-6) & ((r * r).sum(1) > floor)
        inv = torch.where(live, 1.0 / norm.clamp_min(_EPS), torch.zeros_like(norm))
        qk = resid * inv.unsqueeze(1)
        zk = (qk * r).sum(1)
        u[:, :k, k] = proj * live.unsqueeze(1)
        u[:, k, k] = torch.where(live, norm, torch.ones_like(norm))
        q[:, k] = qk
        z[:, k] = zk
        if k + 1 < s:
            r.sub_(zk.unsqueeze(1) * qk)
            if fused:
                _correlate_and_select(r, d_sel, corr, idx, k + 1)
            else:
                corr = _correlate(r, d_sel, corr)
    return idx, u, z


def _solve(u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    # coefficients on the chosen atoms: U c = z, U (b, s, s) upper triangular, z (b, s)
    return torch.linalg.solve_triangular(u, z.unsqueeze(2), upper=True).squeeze(2)


def _correlate_and_select(r: torch.Tensor, d_sel: torch.Tensor, corr: torch.Tensor, idx: torch.Tensor, k: int):
    # the correlations of r (b, m) fp32 into ``corr`` (b, N) in d_sel's dtype, then step k's atoms into idx[:, k]
    # natively. (Blocks of rows kept in L2 between the GEMM and the selection were slower: 256-row blocks coded
    # 59-62k vectors/s in bf16 at (64, 4096, 8), one block 70-71k.)
    _correlate(r, d_sel, corr)
    native.select_atoms(corr, idx, k)


def _correlate(r: torch.Tensor, d_sel: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # r: (b, m) fp32 -> ``out`` (b, N) fp32, or in d_sel's dtype; the product runs in d_sel's dtype. Writing into
    # one buffer matters on CPU: a fresh 8 MB result per step costs more in page faults than the GEMM (4.3 vs 2.6 ms)
    if d_sel.dtype == out.dtype:
        return torch.matmul(r.to(d_sel.dtype), d_sel, out=out)
    return out.copy_(r.to(d_sel.dtype) @ d_sel)


_ARGMAX_BLOCK = 128


def first_argmax(score: torch.Tensor) -> torch.Tensor:
    """``score.argmax(1)`` of a (b, N) tensor: the first index of each row's maximum, the same on ties.

    On CPU, ``argmax`` over long rows is about 15x slower than ``amax`` (2.6 ms against 0.16 ms for
    (512, 4096) fp32 on this project's machine, as long as the GEMM that made the scores), so rows are
    split into blocks of 128: the maximum of each block, the first block holding the row's maximum, then
    the first index of it in that block (0.5 ms).
    """
    b, n = score.shape
    if score.device.type != "cpu" or n % _ARGMAX_BLOCK or n < 8 * _ARGMAX_BLOCK:
        return score.argmax(1)
    blocks = score.view(b, n // _ARGMAX_BLOCK, _ARGMAX_BLOCK)
    block = blocks.amax(2).argmax(1)  # (b,)
    inner = blocks[torch.arange(b, device=score.device), block].argmax(1)
    return block * _ARGMAX_BLOCK + inner


def reconstruct(indices: torch.Tensor, coefs: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """Rebuild dense vectors from sparse codes.

    Parameters
    ----------
    indices : (..., s) integer atom indices.
    coefs : (..., s) coefficients (any float dtype).
    dictionary : (m, N) float tensor.

    Returns
    -------
    (..., m) float32 tensor ``D[:, idx] @ coef``.
    """
    atoms = dictionary.t().to(torch.float32)[indices.long()]  # (..., s, m)
    return (atoms * coefs.to(torch.float32).unsqueeze(-1)).sum(-2)
