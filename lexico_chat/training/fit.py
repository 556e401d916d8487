"""Fitting one dictionary to a set of vectors: OMP codes alternate with dictionary updates.

Two updates are available: ``mod`` (Method of Optimal Directions: the closed-form least-squares
dictionary for the current codes, D = X Cᵀ (C Cᵀ + λI)⁻¹, then unit-norm atoms) and ``adam`` (the
paper's projected Adam steps on ||X - D C||² with atom renormalisation). Atoms no code uses are
re-seeded with the worst-reconstructed vectors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lexico_chat.omp import fastest_select_dtype, omp, reconstruct

__all__ = ["fit_dictionary", "mod_update", "relative_error", "sampled_dictionary"]


def relative_error(x: torch.Tensor, dictionary: torch.Tensor, sparsity: int, **omp_kwargs) -> torch.Tensor:
    """Per-vector ||x - x̂|| / ||x|| after OMP at ``sparsity``; x: (V, m) -> (V,) float32."""
    x = x.float()
    idx, coef = omp(x, dictionary, sparsity, **omp_kwargs)
    err = (x - reconstruct(idx, coef, dictionary)).norm(dim=1)
    return err / x.norm(dim=1).clamp_min(1e-12)


def sampled_dictionary(x: torch.Tensor, atoms: int, seed: int) -> torch.Tensor:
    """Baseline: ``atoms`` distinct training vectors, normalised; x: (V, m) -> (m, atoms)."""
    gen = torch.Generator().manual_seed(seed)
    usable = x[x.float().norm(dim=1) > 1e-6].float().cpu()
    if usable.shape[0] < atoms:
        raise ValueError(f"need at least {atoms} non-zero training vectors for {atoms} atoms, got {usable.shape[0]}")
    picked = usable[torch.randperm(usable.shape[0], generator=gen)[:atoms]]
    return (picked / picked.norm(dim=1, keepdim=True)).t().contiguous().to(x.device)


def fit_dictionary(
    x: torch.Tensor,
    atoms: int,
    sparsity: int,
    *,
    iters: int = 10,
    seed: int = 0,
    update: str = "mod",
    select_dtype: torch.dtype | None = None,
    step: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Fit a (m, atoms) unit-norm dictionary to x: (V, m).

    ``step(iteration, mean_relative_error)`` is called after each iteration (progress bars).
    """
    if update not in ("mod", "adam"):
        raise ValueError(f"`update` must be one of ['mod', 'adam'], got {update!r}")
    x = x.float()
    select_dtype = fastest_select_dtype(x.device) if select_dtype is None else select_dtype
    d = sampled_dictionary(x, atoms, seed)
    adam = _AdamUpdate(d) if update == "adam" else None
    for it in range(iters):
        idx, coef = omp(x, d, sparsity, select_dtype=select_dtype)
        err = (x - reconstruct(idx, coef, d)).norm(dim=1)
        d = adam.update(x, idx, coef) if adam else mod_update(x, idx, coef, d)
        d = _reseed_unused(d, x, idx, err)
        if adam:
            adam.reset_atoms(d)
        if step:
            step(it, float((err / x.norm(dim=1).clamp_min(1e-12)).mean()))
    return d


def mod_update(x: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """One closed-form (MOD) dictionary update for the codes ``idx``, ``coef`` of ``x``."""
    # x: (V, m); idx, coef: (V, s); d: (m, N) -> new (m, N) with unit columns (unused atoms kept)
    m, n = d.shape
    flat = idx.long()
    xct = torch.zeros(n, m, device=x.device)
    cct = torch.zeros(n * n, device=x.device)
    for start in range(0, x.shape[0], 16384):  # bounded memory: (chunk, s, m) at a time
        fi, c, xs = flat[start : start + 16384], coef[start : start + 16384], x[start : start + 16384]
        xct.index_add_(0, fi.reshape(-1), (c.unsqueeze(2) * xs.unsqueeze(1)).reshape(-1, m))
        pair = (fi.unsqueeze(2) * n + fi.unsqueeze(1)).reshape(-1)
        cct.index_add_(0, pair, (c.unsqueeze(2) * c.unsqueeze(1)).reshape(-1))
    cct = cct.view(n, n)
    ridge = 1e-4 * cct.diagonal().mean().clamp_min(1e-12)
    used = cct.diagonal() > 0
    cct = cct + torch.diag(torch.where(used, ridge, torch.ones((), device=x.device)))
    new = torch.linalg.solve(cct, xct).t()  # (m, N) = X Cᵀ (C Cᵀ + λI)⁻¹
    # an atom used only with ~0 coefficients (OMP's last picks once a vector is already fitted, common
    # for low-rank early-layer pre-RoPE keys) solves to a ~0 column that cannot be normalised: keep it
    norms = new.norm(dim=0)
    keep = used & (norms > 1e-4 * norms.max())
    return torch.where(keep.unsqueeze(0), new / norms.clamp_min(1e-30), d)


def _reseed_unused(d: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    usage = torch.bincount(idx.long().reshape(-1), minlength=d.shape[1])
    dead = (usage == 0).nonzero().squeeze(1)  # host sync: once per iteration, outside the OMP loop
    if dead.numel() == 0:
        return d
    worst = err.topk(min(dead.numel(), err.numel())).indices
    fresh = x[worst]
    d = d.clone()
    d[:, dead[: fresh.shape[0]]] = (fresh / fresh.norm(dim=1, keepdim=True).clamp_min(1e-12)).t()
    return d


class _AdamUpdate:
    """Projected Adam on ||X - D C||² (mean over vectors), several minibatch steps per iteration."""

    def __init__(self, d: torch.Tensor, lr: float = 1e-3, steps: int = 20, batch: int = 8192) -> None:
        self.param = torch.nn.Parameter(d.clone())
        self.opt = torch.optim.Adam([self.param], lr=lr)
        self.steps, self.batch = steps, batch

    def update(self, x: torch.Tensor, idx: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(idx[0, 0]))
        for _ in range(self.steps):
            pick = torch.randint(0, x.shape[0], (min(self.batch, x.shape[0]),), generator=gen).to(x.device)
            with torch.enable_grad():
                rec = (self.param.t()[idx[pick].long()] * coef[pick].unsqueeze(-1)).sum(1)
                loss = ((x[pick] - rec) ** 2).sum(1).mean()
                self.opt.zero_grad()
                loss.backward()
            self.opt.step()
            with torch.no_grad():
                self.param /= self.param.norm(dim=0, keepdim=True).clamp_min(1e-12)
        return self.param.detach().clone()

    def reset_atoms(self, d: torch.Tensor) -> None:
        with torch.no_grad():
            self.param.copy_(d)
