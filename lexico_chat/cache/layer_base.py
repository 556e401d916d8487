"""``CompactLayer``: what every cache layer of this project shares (Lexico, KIVI, eviction).

transformers' ``CacheLayerMixin`` asks each layer for the same plumbing: no cropping (compressed or
evicted tokens cannot be rolled back), nothing to offload, beam reordering and batch repetition as
batch selection. Subclasses implement ``batch_select_indices``, ``batch_size`` and ``memory``.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin

from lexico_chat.memory import LayerMemory

__all__ = ["CompactLayer"]


class CompactLayer(CacheLayerMixin):
    """Base of the project's cache layers (one full-attention layer each)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    @property
    def batch_size(self) -> int:
        """Batch rows held (valid once initialised)."""
        raise NotImplementedError

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and reorder) batch rows ``indices``."""
        raise NotImplementedError

    def memory(self, index: int) -> LayerMemory:
        """Exact bytes this layer holds, as layer ``index`` of its cache."""
        raise NotImplementedError

    def get_max_length(self) -> int:
        return -1

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be cropped: its tokens cannot be rolled back")

    def offload(self) -> None:  # the stores are already small; nothing to move
        return None

    def prefetch(self) -> None:
        return None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.batch_select_indices(torch.arange(self.batch_size, device=self.device).repeat_interleave(repeats))
