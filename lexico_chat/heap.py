"""The C heap under torch's CPU tensors: keep freed memory in the process instead of handing it back each time.

torch allocates CPU tensors with the C library's ``malloc``. glibc returns the top of its heap to the system
whenever more than ``M_TRIM_THRESHOLD`` bytes of it are free (and maps allocations above a sliding
``M_MMAP_THRESHOLD`` separately, unmapping them on free). The compressed cache's working tensors are a few MB
each and live for one call (a tile of rebuilt keys, an OMP step's correlations), so with the defaults almost
every one of them is handed back to the system when freed and faulted in again, page by page, when the next one
is made. On 2 CPU cores that roughly doubled the time of one layer's attention over 4,096 compressed tokens
(3.3 ms against 1.9 ms) and made Lexico prefill about a fifth slower.

``retain_freed_memory()`` fixes both thresholds (which also turns off glibc's sliding adjustment): allocations
up to ``MMAP_THRESHOLD`` come from the heap, and freed memory is handed back only once more than
``TRIM_THRESHOLD`` of it is free at the top. The process may therefore keep up to that much memory it does not
use at the moment; the memory figures lexico-chat shows are the bytes of tensors held, not the process's size,
and are not affected. Elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "retain_freed_memory"]

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 << 20  # allocations up to 64 MiB come from the heap
TRIM_THRESHOLD = 256 << 20  # free heap top handed back to the system only beyond 256 MiB
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers of glibc's malloc.h


@functools.cache
def retain_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds once per process; True when they were set (glibc on Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    logger.debug("malloc thresholds %s", "set" if done else "refused")
    return done
