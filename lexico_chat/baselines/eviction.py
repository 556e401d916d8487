"""Sink + recent-window eviction cache (StreamingLLM, Xiao et al., 2023).

Each full-attention layer keeps the first ``sink`` tokens ever seen ("attention sinks") and the most
recent ``window`` tokens, in ``dtype`` (fp16 by default); every other token is dropped for good.

**Eviction without re-rotation**: keys are stored post-RoPE, exactly as received, so every kept
token keeps the position the model gave it; the cache reports every token seen in
``get_seq_length`` so new tokens get their true positions too. (StreamingLLM proper re-rotates
keys to positions inside the cache; we do not.)

During one forward call of t new tokens the attention sees the kept tokens plus all t new ones
(causally); eviction happens after the call. Feed short chunks for a budget that is tight during
prefill too.
"""

from __future__ import annotations

import torch

from lexico_chat.baselines.cache import BaselineLayer
from lexico_chat.baselines.kivi import STORAGE_DTYPES
from lexico_chat.cache.plan import PlannedCache

__all__ = ["SinkWindowLayer", "EvictionCache"]


class SinkWindowLayer(BaselineLayer):
    """KV cache of one full-attention layer keeping ``sink`` first and ``window`` most recent tokens.

    Parameters
    ----------
    sink : first tokens always kept (>= 0).
    window : most recent tokens kept (>= 1).
    dtype : storage dtype, one of ``STORAGE_DTYPES``.

    Attributes (after the first update)
    ----------
    keys, values : (b, h, min(seen, sink + window), m) kept tokens in ``dtype``, oldest first.
    seen_tokens : tokens received so far (kept or not).
    """

    kind = "eviction"

    def __init__(self, sink: int = 4, window: int = 256, *, dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        if sink < 0 or window < 1:
            raise ValueError(f"`sink` must be >= 0 and `window` >= 1, got sink={sink}, window={window}")
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"`dtype` must be one of {list(STORAGE_DTYPES)}, got {dtype}")
        self.sink, self.window, self.storage_dtype = sink, window, dtype

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._begin(key_states)
        m = key_states.shape[-1]
        self.keys, self.values = self._empty(m, self.storage_dtype), self._empty(m, self.storage_dtype)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (b, h, t, m) states; return the kept + new tokens (b, h, kept + t, m) in the model dtype."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = torch.cat([self.keys, key_states.to(self.storage_dtype)], dim=2)
        values = torch.cat([self.values, value_states.to(self.storage_dtype)], dim=2)
        self.seen_tokens += key_states.shape[2]
        if keys.shape[2] > self.sink + self.window:
            self.keys = torch.cat([keys[:, :, : self.sink], keys[:, :, -self.window :]], dim=2)
            self.values = torch.cat([values[:, :, : self.sink], values[:, :, -self.window :]], dim=2)
        else:
            self.keys, self.values = keys, values
        return keys.to(self.dtype), values.to(self.dtype)

    @property
    def kept_tokens(self) -> int:
        return self.keys.shape[2] if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kept + query_length, seen - kept): the kept tokens are masked as if they came right before the query."""
        return self.kept_tokens + query_length, self.seen_tokens - self.kept_tokens


class EvictionCache(PlannedCache):
    """A cache with a ``SinkWindowLayer`` at every full-attention layer (arguments as ``SinkWindowLayer``)."""

    def __init__(
        self,
        config=None,
        *,
        sink: int = 4,
        window: int = 256,
        dtype: torch.dtype = torch.float16,
        num_layers: int | None = None,
    ) -> None:
        SinkWindowLayer(sink, window, dtype=dtype)  # validate once
        super().__init__(lambda _: SinkWindowLayer(sink, window, dtype=dtype), config=config, num_layers=num_layers)
        self.sink, self.window = sink, window
