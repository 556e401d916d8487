"""Process and GPU memory figures: RSS through psutil, device memory through NVML when present."""

from __future__ import annotations

import functools
import logging

import psutil

__all__ = ["gpu_memory", "release_free_memory", "rss_bytes"]

logger = logging.getLogger(__name__)


def rss_bytes() -> int:
    """Resident set size of this process in bytes."""
    return psutil.Process().memory_info().rss


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` (None on other C libraries and systems)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``); True if it ran.

    A long session allocates per-step temporaries (attention tiles) between the cache's growing
    stores; glibc keeps the freed pages between live blocks resident, so RSS would drift above what the
    cache holds. The engine calls this after every turn, which costs about a millisecond.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _nvml_handle(index: int):
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as err:  # noqa: BLE001 - no driver, no GPU, no library: all mean "no NVML"
        logger.debug("NVML unavailable: %s", err)
        return None


def gpu_memory(index: int = 0) -> tuple[int | None, int | None]:
    """(used, total) bytes of NVIDIA GPU ``index`` from NVML, or (None, None) without one."""
    handle = _nvml_handle(index)
    if handle is None:
        return None, None
    import pynvml

    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception:  # noqa: BLE001 - a GPU that went away reads as none
        return None, None
    return int(info.used), int(info.total)
