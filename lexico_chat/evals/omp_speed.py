"""`lexico-chat eval omp-speed`: batched OMP throughput at the paper's shapes."""

from __future__ import annotations

import argparse
import time

import torch

from lexico_chat.omp import omp

__all__ = ["register", "run", "omp_speed"]

SHAPES = ((64, 1024, 8), (128, 4096, 16))


def register(subparsers) -> None:
    p = subparsers.add_parser("omp-speed", help="OMP vectors/s at (m, N, s) = (64, 1024, 8) and (128, 4096, 16)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--vectors", type=int, default=32768, help="vectors encoded per measurement")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _time(x, d, s, select_dtype, repeats=3) -> float:
    omp(x[:1024], d, s, select_dtype=select_dtype)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        omp(x, d, s, select_dtype=select_dtype)
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return x.shape[0] / best


def omp_speed(device: str = "cpu", vectors: int = 32768, shapes=SHAPES) -> dict:
    """Best-of-3 vectors/s for each (m, N, s), with bf16 atom selection (the cache's setting) and exact fp32."""
    gen = torch.Generator().manual_seed(0)
    results = []
    for m, n, s in shapes:
        d = torch.randn(m, n, generator=gen)
        d = (d / d.norm(dim=0)).to(device)
        x = torch.randn(vectors, m, generator=gen).to(device)
        results.append(
            {
                "m": m,
                "N": n,
                "s": s,
                "vectors_per_s": _time(x, d, s, torch.bfloat16),
                "vectors_per_s_fp32_select": _time(x, d, s, torch.float32),
            }
        )
    name = (
        torch.cuda.get_device_name(device)
        if str(device).startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    return {"device": name, "results": results}


def run(args: argparse.Namespace) -> int:
    from lexico_chat.cli import emit

    emit(omp_speed(args.device, args.vectors), args.json)
    return 0
