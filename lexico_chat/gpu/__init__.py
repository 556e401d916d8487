"""Optional GPU path: Triton kernels for decode attention over compressed keys/values, and a fused OMP.

Triton is an optional dependency (the ``gpu`` extra). Nothing here imports it until a kernel is first
needed, so this package imports without it and ``available()`` then says False.

Two hooks, each returning None when its fast path does not apply (the caller then keeps its PyTorch
path, which is the reference and the CPU fallback):

* ``try_decode_attention`` for ``lexico_chat.cache.kernels.compressed_attention``: CUDA tensors, one
  query token, a mask that is None or one row per batch, no sliding window narrower than the keys.
* ``try_omp`` for ``lexico_chat.omp.omp``: CUDA tensors.

The environment variable ``LEXICO_TRITON=0`` turns both hooks off (``pytorch_path()`` does so for a
block), so the PyTorch path can be checked and timed on the same machine.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = ["available", "enabled", "pytorch_path", "try_decode_attention", "try_omp", "ENV_SWITCH"]

ENV_SWITCH = "LEXICO_TRITON"
ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SELECT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # OMP atom-selection dtypes the kernel takes


@functools.cache
def available() -> bool:
    """True when Triton can be imported (the kernels also need a CUDA device, or TRITON_INTERPRET=1 on CPU)."""
    return importlib.util.find_spec("triton") is not None


def enabled(tensor: torch.Tensor) -> bool:
    """Whether the hooks may run for ``tensor``: on CUDA, Triton importable, not switched off by LEXICO_TRITON=0."""
    return tensor.is_cuda and os.environ.get(ENV_SWITCH, "1") != "0" and available()


@contextlib.contextmanager
def pytorch_path() -> Iterator[None]:
    """Within the block the hooks return None, so callers take their PyTorch paths."""
    previous = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_SWITCH, None)
        else:
            os.environ[ENV_SWITCH] = previous


def try_decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    softcap: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor | None:
    """``compressed_attention`` through the Triton decode kernels, or None where they do not apply.

    Same arguments and result as ``lexico_chat.cache.kernels.compressed_attention``: query (b, heads,
    1, m), buffer key/value (b, kv_heads, Tb, m), ``compressed`` a ``CompressedKV`` or None; returns
    (b, 1, heads, m) in ``query.dtype``.
    """
    if query.shape[2] != 1 or not enabled(query) or query.dtype not in ATTENTION_DTYPES:
        return None
    total = key.shape[2] + (compressed.length if compressed is not None else 0)
    if total == 0 or (sliding_window is not None and sliding_window < total):
        return None
    if attention_mask is not None and (attention_mask.ndim != 4 or attention_mask.shape[1:3] != (1, 1)):
        return None
    from lexico_chat.gpu.decode import decode_attention

    return decode_attention(
        query, key, value, compressed, attention_mask, scaling=scaling, softcap=softcap, sliding_window=sliding_window
    )


def try_omp(
    vectors: torch.Tensor,
    dictionary: torch.Tensor,
    sparsity: int,
    *,
    tol: float = 0.0,
    select_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``lexico_chat.omp.omp`` through the fused Triton kernel, or None where it does not apply.

    Arguments as ``omp`` (already validated there); returns (B, s) int16 indices and (B, s) fp32 coefficients.
    """
    if not enabled(vectors) or vectors.shape[0] == 0 or select_dtype not in SELECT_DTYPES:
        return None
    from lexico_chat.gpu.pursuit import omp

    return omp(vectors, dictionary, sparsity, tol=tol, select_dtype=select_dtype)
