"""Launch helpers shared by the Triton kernels: block sizes, the device to launch on, parallelism."""

from __future__ import annotations

import contextlib
import functools

import torch

__all__ = ["pow2", "on_device", "program_slots"]

INTERPRETER_SLOTS = 8  # programs the split heuristics aim for when kernels run in the interpreter (CPU)


def pow2(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum) (Triton block shapes must be powers of two)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current for a launch: Triton launches on the current CUDA device, and layers may
    live on different GPUs (``device_map="auto"``)."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def program_slots(device: torch.device) -> int:
    """Programs that keep the device busy: two per streaming multiprocessor on CUDA."""
    if device.type != "cuda":
        return INTERPRETER_SLOTS
    return 2 * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
