"""``BaselineLayer``: what the baseline cache layers (KIVI, eviction) share.

Each baseline layer holds plain tensors with batch first: ``compressed_tensors`` (KIVI's packed codes,
scales and zero-points) and ``buffer_tensors`` (tokens held in full precision: KIVI's residual window,
eviction's kept tokens). Bytes, batch selection and reset are defined once here from those names; the
caches themselves are ``lexico_chat.cache.plan.PlannedCache``s, counted by ``lexico_chat.memory``.

Their ``fp16_bytes`` counts every token seen (2 x tokens x batch x kv_heads x head_dim x 2 bytes per
layer): what a full cache of the same model would hold.
"""

from __future__ import annotations

import torch

from lexico_chat.cache.layer_base import CompactLayer
from lexico_chat.memory import LayerMemory, fp16_bytes, tensor_bytes

__all__ = ["BaselineLayer"]


class BaselineLayer(CompactLayer):
    """Base of the baseline layers; the tensors named in ``compressed_tensors`` and ``buffer_tensors`` are
    everything they hold.

    Subclasses set those names and ``kind``, and call ``_begin`` in ``lazy_initialization``, which records
    ``dtype``, ``device`` and ``shape`` = (batch, kv_heads, head_dim); ``seen_tokens`` counts every token
    received.
    """

    kind = "baseline"
    compressed_tensors: tuple[str, ...] = ()
    buffer_tensors: tuple[str, ...] = ("keys", "values")

    def __init__(self) -> None:
        super().__init__()
        self.seen_tokens = 0

    def _begin(self, key_states: torch.Tensor) -> None:
        """Start holding (batch, kv_heads, *, head_dim) states: record dtype, device and shape, count from 0."""
        b, h, _, m = key_states.shape
        self.dtype, self.device, self.shape = key_states.dtype, key_states.device, (b, h, m)
        self.seen_tokens = 0
        self.is_initialized = True

    def _empty(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        """An empty (batch, kv_heads, 0, width) tensor on the layer's device."""
        b, h, _ = self.shape
        return torch.empty(b, h, 0, width, dtype=dtype, device=self.device)

    @property
    def held_tensors(self) -> tuple[str, ...]:
        return self.compressed_tensors + self.buffer_tensors

    def held_bytes(self) -> int:
        """Bytes of every tensor held."""
        if not self.is_initialized:
            return 0
        return tensor_bytes(*(getattr(self, name) for name in self.held_tensors))

    def memory(self, index: int) -> LayerMemory:
        """Exact bytes held (compressed and full-precision tensors) and the fp16 bytes of every token seen."""
        if not self.is_initialized:
            return LayerMemory(index, "empty")
        compressed = tensor_bytes(*(getattr(self, name) for name in self.compressed_tensors))
        buffer = tensor_bytes(*(getattr(self, name) for name in self.buffer_tensors))
        first = self.compressed_tensors[:1]
        return LayerMemory(
            index,
            self.kind,
            compressed_tokens=getattr(self, first[0]).shape[2] if first else 0,
            buffer_tokens=getattr(self, self.buffer_tensors[0]).shape[2],
            seen_tokens=self.seen_tokens,
            compressed_bytes=compressed,
            buffer_bytes=buffer,
            allocated_bytes=compressed + buffer,
            fp16_bytes=fp16_bytes(self.seen_tokens, *self.shape),
        )

    def get_seq_length(self) -> int:
        """Every token seen (positions of new tokens continue from there)."""
        return self.seen_tokens

    def reset(self) -> None:
        """Drop every token."""
        self.is_initialized = False
        self.seen_tokens = 0
        for name in self.held_tensors:
            setattr(self, name, None)

    @property
    def batch_size(self) -> int:
        return self.shape[0]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and reorder) batch rows ``indices``."""
        if self.is_initialized:
            for name in self.held_tensors:
                setattr(self, name, getattr(self, name).index_select(0, indices.to(self.device)))
            self.shape = (indices.shape[0], *self.shape[1:])
