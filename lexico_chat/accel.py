"""Whether the optional Triton kernels may run: the one predicate and the one switch.

Triton is an optional dependency (the ``gpu`` extra). The OMP (``lexico_chat.omp``) and the attention
dispatch (``lexico_chat.attention.dispatch``) ask ``triton_enabled(tensor)`` and take their PyTorch path,
the reference and the CPU fallback, when it says False. The environment variable ``LEXICO_TRITON=0``
(``pytorch_path()`` for a block) turns the kernels off, so the PyTorch path can be checked and timed on
the same machine. This module imports only torch and the standard library.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = ["ENV_SWITCH", "pytorch_path", "triton_available", "triton_enabled"]

ENV_SWITCH = "LEXICO_TRITON"


@functools.cache
def triton_available() -> bool:
    """True when Triton can be imported (its kernels also need a CUDA device, or TRITON_INTERPRET=1 on CPU)."""
    return importlib.util.find_spec("triton") is not None


def triton_enabled(tensor: torch.Tensor) -> bool:
    """Whether a Triton kernel may run on ``tensor``.

    Parameters
    ----------
    tensor : any tensor the kernel would read.

    Returns
    -------
    True when ``tensor`` is on CUDA, Triton is importable and ``LEXICO_TRITON`` is not "0".
    """
    return tensor.is_cuda and os.environ.get(ENV_SWITCH, "1") != "0" and triton_available()


@contextlib.contextmanager
def pytorch_path() -> Iterator[None]:
    """Within the block ``triton_enabled`` is False, so every caller takes its PyTorch path."""
    previous = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_SWITCH, None)
        else:
            os.environ[ENV_SWITCH] = previous
