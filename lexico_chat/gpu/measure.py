"""Timing and memory helpers of the GPU benchmark (``benchmarks/gpu_bench.py``)."""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["sync", "time_ms", "peak_gib", "nan_if_none", "verdict"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median milliseconds per call of ``fn()``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def verdict(passed: bool) -> str:
    return "triton vs pytorch: " + ("PASS" if passed else "FAIL")
