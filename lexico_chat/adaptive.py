"""Budgeted adaptive sparsity: within each compression window, vectors that code badly get more atoms.

Every (batch row, KV head) window of ``window`` vectors gets a fixed number of atoms, ``window_atoms``: the
bytes of ``window`` codes of ``sparsity`` atoms, less the 4-bit atom count each vector now carries. OMP runs
to ``longest_code`` atoms; its step k lowers a vector's squared residual by ``z_k²``, and the first k atoms it
picks are exactly its code at sparsity k. ``allocate`` gives every vector one atom, then hands out the rest of
the window's atoms in order of ``z_k² / ||x||^(2 · NORM_POWER)`` (made non-increasing in k, so each vector
takes a prefix of its atoms), and ``prefix_coefficients`` solves each vector's least squares on its prefix.

The weight is the measured choice. Minimising the window's plain squared error (power 0) halved the keys' and
values' excess error over uniform codes but made perplexity worse (s = 4: 22.46 against 22.21 uniform, on
4,096 held-out tokens, full cache 21.40): it spends the atoms on the vectors of largest norm. Relative error
(power 1) gave 21.99, power 1.5 21.82, power 2 21.84, power 3 22.04; power 1.5 also won on two other held-out
slices (``docs/benchmarks.md``, "Adaptive sparsity").

Storage (``lexico_chat.cache.store.AdaptiveCodeStore``): a window's atoms lie in one run, vector after vector;
no offsets are stored (window w starts at atom w · ``window_atoms``), only each vector's count, two in a byte.
"""

from __future__ import annotations

import torch

from lexico_chat.budget import code_bytes
from lexico_chat.omp import omp_factors

__all__ = [
    "MAX_COUNT",
    "NORM_POWER",
    "adaptive_codes",
    "allocate",
    "count_bytes",
    "longest_code",
    "prefix_coefficients",
    "window_atoms",
]

MAX_COUNT = 16  # atom counts are stored in 4 bits (count - 1)
NORM_POWER = 1.5  # see the module docstring


def longest_code(sparsity: int, head_dim: int, atoms: int) -> int:
    """The most atoms one vector may get: min(2 · sparsity, ``MAX_COUNT``, head_dim, atoms), at least
    ``sparsity``. Codes adapt only where this exceeds ``sparsity``."""
    return max(sparsity, min(2 * sparsity, MAX_COUNT, head_dim, atoms))


def count_bytes(window: int) -> int:
    """Bytes of a window's atom counts: 4 bits per vector."""
    return -(-window // 2)


def window_atoms(sparsity: int, window: int, longest: int, index_bits: int = 12, coef_bytes: int = 1) -> int:
    """Atoms of one window: as many as fit in the bytes of ``window`` uniform codes of ``sparsity`` atoms less
    the counts (an even number: 12-bit indices pack in pairs), within [window, window · longest]."""
    budget = window * code_bytes(sparsity, index_bits, coef_bytes) - count_bytes(window)
    total = 2 * (budget // (2 * coef_bytes + (3 if index_bits == 12 else 4)))
    return max(window, min(total, window * longest))


def allocate(z: torch.Tensor, norms: torch.Tensor, window: int, atoms: int) -> torch.Tensor:
    """Atoms per vector, ``atoms`` in every group of ``window`` consecutive vectors.

    Parameters
    ----------
    z : (G · window, s_max) float32 OMP residual components (``omp_factors``); norms : (G · window,) ||x||.
    window : vectors per group; atoms : atoms per group, window <= atoms <= window · s_max.

    Returns
    -------
    (G · window,) int64 counts in [1, s_max], summing to ``atoms`` over each group.
    """
    n, longest = z.shape
    if n % window or not window <= atoms <= window * longest:
        raise ValueError(
            f"need groups of {window} vectors and {window} <= atoms <= {window * longest}, got {n}, {atoms}"
        )
    counts = torch.ones(n // window, window, dtype=torch.int64, device=z.device)
    if atoms == window or longest == 1:
        return counts.view(-1)
    gain = (z / norms.clamp_min(1e-12).pow(NORM_POWER).unsqueeze(1)).square()
    gain = torch.cummin(gain, dim=1).values[:, 1:]  # non-increasing: every vector takes a prefix
    chosen = gain.reshape(n // window, window * (longest - 1)).topk(atoms - window, dim=1).indices // (longest - 1)
    counts.scatter_add_(1, chosen, torch.ones_like(chosen))
    return counts.view(-1)


def prefix_coefficients(u: torch.Tensor, z: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients of each vector on its first ``counts`` atoms, zeros after them.

    Parameters
    ----------
    u : (n, s_max, s_max) upper-triangular factors and z : (n, s_max), from ``omp_factors``.
    counts : (n,) integer atoms kept per vector.

    Returns
    -------
    (n, s_max) float32.
    """
    keep = torch.arange(z.shape[1], device=z.device) < counts.unsqueeze(1)  # (n, s_max)
    block = u * (keep.unsqueeze(2) & keep.unsqueeze(1)) + torch.diag_embed((~keep).to(u.dtype))
    return torch.linalg.solve_triangular(block, (z * keep).unsqueeze(2), upper=True).squeeze(2)


def adaptive_codes(
    vectors: torch.Tensor,
    dictionary: torch.Tensor,
    longest: int,
    window: int,
    atoms: int,
    *,
    select_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes of ``atoms`` atoms per group of ``window`` consecutive vectors.

    Parameters
    ----------
    vectors : (G · window, m) float; dictionary : (m, N) unit-norm atoms.
    longest : atoms a vector may get (``longest_code``); atoms : per group (``window_atoms``).

    Returns
    -------
    indices : (G · window, longest) int16, each vector's atoms first (the rest are atoms of no weight).
    coefs : (G · window, longest) float32, zero after each vector's count.
    counts : (G · window,) int64.
    """
    indices, u, z = omp_factors(vectors, dictionary, longest, select_dtype=select_dtype)
    counts = allocate(z, vectors.to(torch.float32).norm(dim=1), window, atoms)
    return indices, prefix_coefficients(u, z, counts), counts
