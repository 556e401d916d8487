"""Wall-clock timing of work that may run asynchronously on a GPU: the one implementation the evals and
benchmarks share."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["sync", "timed", "time_ms"]

T = TypeVar("T")


def sync(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | str) -> tuple[float, T]:
    """Seconds of one call of ``fn()``, synchronising ``device`` before and after, and its result."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def time_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 1) -> float:
    """Median milliseconds per call of ``fn()`` over ``reps`` calls, after ``warmup`` untimed ones.

    On CUDA each call is timed with CUDA events; elsewhere with ``time.perf_counter``.
    """
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
