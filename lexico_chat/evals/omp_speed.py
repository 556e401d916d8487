"""`lexico-chat eval omp-speed`: batched OMP throughput at the paper's shapes and the default cache's."""

from __future__ import annotations

import argparse

import torch

from lexico_chat import native
from lexico_chat.omp import fastest_select_dtype, omp
from lexico_chat.output import emit
from lexico_chat.timing import timed

__all__ = ["register", "run", "omp_speed"]

SHAPES = ((64, 1024, 8), (64, 4096, 8), (128, 4096, 16))  # (m, N, s): the paper's two and the default cache's


def register(subparsers) -> None:
    from lexico_chat.options import add_json_option, positive_int

    shapes = ", ".join(str(shape) for shape in SHAPES)
    p = subparsers.add_parser("omp-speed", help=f"OMP vectors/s at (m, N, s) = {shapes}")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--vectors", type=positive_int, default=32768, help="vectors per measurement (default 32768)")
    add_json_option(p)
    p.set_defaults(func=run)


def _vectors_per_s(x: torch.Tensor, d: torch.Tensor, s: int, select_dtype: torch.dtype, repeats: int = 3) -> float:
    """Best-of-``repeats`` vectors/s of OMP on (n, m) ``x`` with (m, N) ``d``, after a warm-up on 1024 rows."""
    omp(x[:1024], d, s, select_dtype=select_dtype)
    best = min(timed(lambda: omp(x, d, s, select_dtype=select_dtype), x.device)[0] for _ in range(repeats))
    return x.shape[0] / best


def omp_speed(device: str = "cpu", vectors: int = 32768, shapes=SHAPES) -> dict:
    """Best-of-3 vectors/s for each (m, N, s), with the cache's default atom selection ("auto": bf16 where
    the device has fast bf16 GEMMs, else fp32; named in ``select_dtype``) and with exact fp32 selection.
    bf16 is not timed where "auto" rejects it (about a hundred times slower on CPUs without bf16 units)."""
    gen = torch.Generator().manual_seed(0)
    chosen = fastest_select_dtype(device)
    results = []
    for m, n, s in shapes:
        d = torch.randn(m, n, generator=gen)
        d = (d / d.norm(dim=0)).to(device)
        x = torch.randn(vectors, m, generator=gen).to(device)
        exact = _vectors_per_s(x, d, s, torch.float32)
        default = exact if chosen == torch.float32 else _vectors_per_s(x, d, s, chosen)
        results.append({"m": m, "N": n, "s": s, "vectors_per_s": default, "vectors_per_s_fp32_select": exact})
    name = (
        torch.cuda.get_device_name(device)
        if str(device).startswith("cuda")
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    native_selection = str(device) == "cpu" and native.available()  # the one-pass selection of lexico_chat.native
    return {
        "device": name,
        "select_dtype": str(chosen).removeprefix("torch."),
        "native_selection": native_selection,
        "results": results,
    }


def run(args: argparse.Namespace) -> int:
    emit(omp_speed(args.device, args.vectors), args.json)
    return 0
