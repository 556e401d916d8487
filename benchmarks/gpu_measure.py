"""Memory and report helpers of the GPU benchmark (``benchmarks/gpu_bench.py``); timing is
``lexico_chat.timing`` (re-exported here for the benchmark modules)."""

from __future__ import annotations

import torch

from lexico_chat.timing import sync, time_ms

__all__ = ["sync", "time_ms", "peak_gib", "nan_if_none", "verdict"]


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def verdict(passed: bool, what: str = "triton vs pytorch") -> str:
    return f"{what}: " + ("PASS" if passed else "FAIL")
