"""Choosing where the model runs: ``--device auto`` (the default) takes the CUDA GPU when there is one (an
accelerate device map over all of them when there are several), else Apple's ``mps`` where torch has it,
else the CPU; the weight dtype follows (bf16 on CUDA, fp16 on mps, fp32 on CPU)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from lexico_chat.errors import LexicoError

__all__ = ["DEVICE_CHOICES", "Placement", "select_device"]

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DTYPES = {"cuda": torch.bfloat16, "mps": torch.float16, "cpu": torch.float32}


@dataclass(frozen=True)
class Placement:
    """Where the weights go.

    device : the torch device of the inputs (with a device map, the GPU holding the embeddings).
    dtype : the weight dtype.
    gpus : GPUs an accelerate device map spreads the layers over (0 without one).
    """

    device: str
    dtype: torch.dtype
    gpus: int = 0

    @property
    def device_map(self) -> str | None:
        """``"auto"`` for transformers' ``from_pretrained`` when the layers span several GPUs, else None."""
        return "auto" if self.gpus > 1 else None

    @property
    def label(self) -> str:
        """What the status bar and ``--json`` show: ``cpu``, ``cuda:0``, ``mps`` or ``cuda ×4 (device map)``."""
        return f"cuda ×{self.gpus} (device map)" if self.gpus > 1 else self.device


def select_device(spec: str = "auto", dtype: torch.dtype | None = None) -> Placement:
    """The placement ``--device spec`` asks for on this machine.

    Parameters
    ----------
    spec : "auto", "cpu", "cuda", "cuda:N" or "mps".
    dtype : weight dtype; None picks bf16 on CUDA, fp16 on mps, fp32 on CPU.
    """
    spec = spec.strip().lower()
    if spec == "auto":
        placement = _auto()
    elif spec == "cpu":
        placement = Placement("cpu", _DTYPES["cpu"])
    elif spec == "mps":
        if not _mps_available():
            raise LexicoError("--device mps: this torch build or machine has no Apple GPU (mps); use auto or cpu")
        placement = Placement("mps", _DTYPES["mps"])
    elif re.fullmatch(r"cuda(:\d+)?", spec):
        placement = Placement(_cuda_device(spec), _DTYPES["cuda"])
    else:
        raise LexicoError(f"--device must be one of {', '.join(DEVICE_CHOICES)}; got {spec!r}")
    if dtype is not None:
        placement = Placement(placement.device, dtype, placement.gpus)
    logger.info("device %s (%s)", placement.label, placement.dtype)
    return placement


def _auto() -> Placement:
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        return Placement("cuda:0", _DTYPES["cuda"], gpus if gpus > 1 else 0)
    if _mps_available():
        return Placement("mps", _DTYPES["mps"])
    return Placement("cpu", _DTYPES["cpu"])


def _cuda_device(spec: str) -> str:
    if not torch.cuda.is_available():
        raise LexicoError(f"--device {spec}: no CUDA GPU is visible (torch.cuda.is_available() is False); use auto")
    index = int(spec.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise LexicoError(f"--device {spec}: there are {count} CUDA GPUs (cuda:0 to cuda:{count - 1})")
    return f"cuda:{index}"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
