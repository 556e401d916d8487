"""Would an approximate atom selection keep OMP's codes? (issue 12: coarse-to-fine selection, measured, not built)

Captures the vectors the default cache codes while reading ``--tokens`` held-out tokens (uniform s, every
layer's keys and values), then codes a sample of them with exact OMP and with two cheaper selections that
score only candidates:

* ``lowrank R K``: correlations in the top-R principal subspace of the atoms (an R/m share of the GEMM), the K
  best of them scored exactly;
* ``clusters C T``: atoms grouped into C sign-free spherical k-means clusters, the T clusters whose centroid
  correlates best scored exactly (about T/C of the atoms plus C centroids).

Reports, per scheme, the share of vectors whose atom set differs from exact OMP's and the ratio of their mean
relative squared error to exact OMP's. Run from the repository root:

    python benchmarks/approx_selection.py [--tokens 1024] [--sample 300]
"""

from __future__ import annotations

import argparse

import torch

from lexico_chat.omp import omp


def capture(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(dictionary (m, N), vectors (n, m)) for every dictionary the cache coded with, in first-use order."""
    import lexico_chat.cache.layer as layer_module
    from lexico_chat.cli import main

    seen: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
    original = layer_module.omp

    def spy(vectors, dictionary, sparsity, **kwargs):
        seen.setdefault(dictionary.data_ptr(), (dictionary.clone(), []))[1].append(vectors.clone())
        return original(vectors, dictionary, sparsity, **kwargs)

    layer_module.omp = spy
    try:
        argv = ["eval", "perplexity", "--text", "data/heldout.txt", "--max-tokens", str(tokens), "--json"]
        main([*argv, "--layer-budget", "uniform"])
    finally:
        layer_module.omp = original
    return [(d, torch.cat(xs)) for d, xs in seen.values()]


def _refit(y, d, idx):
    atoms = d.t()[idx]  # (b, t, m)
    coef = torch.linalg.lstsq(atoms.transpose(1, 2), y.unsqueeze(2)).solution
    return y - (atoms.transpose(1, 2) @ coef).squeeze(2)


def lowrank_omp(y, d, s, rank, keep):
    basis = torch.linalg.svd(d, full_matrices=False)[0][:, :rank]  # (m, rank)
    reduced = basis.t() @ d
    idx = torch.zeros(y.shape[0], s, dtype=torch.long)
    resid = y
    for step in range(s):
        score = ((resid @ basis) @ reduced).abs()
        if step:
            score.scatter_(1, idx[:, :step], -1.0)
        cand = score.topk(keep, dim=1).indices
        exact = torch.einsum("bkm,bm->bk", d.t()[cand], resid).abs()
        idx[:, step] = cand.gather(1, exact.argmax(1, keepdim=True)).squeeze(1)
        resid = _refit(y, d, idx[:, : step + 1])
    return idx, resid


def spherical_clusters(d, count, iters=15):
    atoms = d.t()
    centroids = atoms[torch.randperm(atoms.shape[0])[:count]].clone()
    for _ in range(iters):
        sim = atoms @ centroids.t()
        assign = sim.abs().argmax(1)
        sign = sim.gather(1, assign[:, None]).sign()
        centroids = torch.nn.functional.normalize(
            torch.zeros_like(centroids).index_add_(0, assign, atoms * sign), dim=1
        )
    return centroids, assign


def cluster_omp(y, d, s, count, top):
    centroids, assign = spherical_clusters(d, count)
    members = [torch.nonzero(assign == j).squeeze(1) for j in range(count)]
    idx = torch.zeros(y.shape[0], s, dtype=torch.long)
    resid = y
    for step in range(s):
        best = (resid @ centroids.t()).abs().topk(top, dim=1).indices
        for row in range(y.shape[0]):
            cand = torch.cat([members[j] for j in best[row].tolist()])
            cand = cand[~torch.isin(cand, idx[row, :step])]
            idx[row, step] = cand[(d.t()[cand] @ resid[row]).abs().argmax()]
        resid = _refit(y, d, idx[:, : step + 1])
    return idx, resid


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--sample", type=int, default=300, help="vectors per dictionary coded by every scheme")
    parser.add_argument("--sparsity", type=int, default=8)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pairs = capture(args.tokens)[::8]  # every 8th dictionary: keys and values of several layers
    schemes = {
        "lowrank 32 16": lambda y, d: lowrank_omp(y, d, args.sparsity, 32, 16),
        "lowrank 32 32": lambda y, d: lowrank_omp(y, d, args.sparsity, 32, 32),
        "clusters 256 8": lambda y, d: cluster_omp(y, d, args.sparsity, 256, 8),
        "clusters 256 16": lambda y, d: cluster_omp(y, d, args.sparsity, 256, 16),
    }
    for name, scheme in schemes.items():
        other, ratios = [], []
        for d, x in pairs:
            d, y = d.float(), x[torch.randperm(x.shape[0])[: args.sample]].float()
            exact_idx, exact_coef = omp(y, d, args.sparsity, select_dtype=torch.float32)
            exact_err = y - (d.t()[exact_idx.long()] * exact_coef[..., None]).sum(1)
            idx, resid = scheme(y, d)
            other.append((idx.sort(1).values != exact_idx.long().sort(1).values).any(1).float().mean().item())
            ratios.append(
                ((resid**2).sum(1) / (y**2).sum(1)).mean().item()
                / ((exact_err**2).sum(1) / (y**2).sum(1)).mean().item()
            )
        print(
            f"{name}: another atom set for {sum(other) / len(other):.1%} of vectors; squared error "
            f"{sum(ratios) / len(ratios):.3f}x exact OMP's (worst dictionary {max(ratios):.3f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
