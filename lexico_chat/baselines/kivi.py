"""KIVI-style quantized KV cache (Liu et al., 2024), written in-project (no quanto/hqq backend).

* Keys are quantized **per channel**: a group is ``group`` consecutive tokens of one channel of one
  head, with its own fp16 scale and zero-point (keys have outlier channels; grouping along tokens
  keeps each channel's range apart).
* Values are quantized **per token**: a group is ``value_group`` consecutive channels of one token.
* The most recent tokens stay in ``dtype`` (fp16 by default) in a residual window: after each update,
  the oldest whole groups of ``group`` tokens beyond ``residual`` are quantized, so the window holds
  between ``residual`` and ``residual + group - 1`` tokens once the text is long enough.
* Codes are ``bits``-bit integers packed 8 / bits per uint8 byte (``lexico_chat.baselines.quantize``).

``update`` returns dequantized keys/values of every token (quantized ones first, then the residual),
in the model's dtype, so any attention implementation works: this baseline measures quality per
byte, not speed. ``memory()`` counts codes, scales, zero-points and the residual window exactly.
"""

from __future__ import annotations

import torch

from lexico_chat.baselines.cache import BaselineLayer
from lexico_chat.baselines.quantize import BITS, dequantize, pack, quantize, unpack
from lexico_chat.cache.plan import PlannedCache

__all__ = ["KiviLayer", "KiviCache", "STORAGE_DTYPES"]

STORAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KiviLayer(BaselineLayer):
    """Quantized KV cache of one full-attention layer.

    Parameters
    ----------
    bits : code width, one of ``BITS`` (KIVI uses 2 and 4).
    group : tokens per key group (>= 1).
    value_group : channels per value group (>= 1; capped at head_dim, which it must divide).
    residual : recent tokens kept unquantized (>= 0).
    dtype : storage dtype of the residual window, one of ``STORAGE_DTYPES``.

    Attributes (after the first update; b = batch, h = kv heads, m = head_dim, Tq = quantized tokens)
    ----------
    key_codes, value_codes : (b, h, Tq, m * bits / 8) uint8 packed codes.
    key_scale, key_zero : (b, h, Tq / group, m) float16.
    value_scale, value_zero : (b, h, Tq, m / value_group) float16.
    keys, values : (b, h, Tr, m) residual window in ``dtype``.
    """

    kind = "kivi"
    compressed_tensors = ("key_codes", "key_scale", "key_zero", "value_codes", "value_scale", "value_zero")

    def __init__(
        self, bits: int = 2, *, group: int = 32, value_group: int = 32, residual: int = 128, dtype=torch.float16
    ) -> None:
        super().__init__()
        if bits not in BITS:
            raise ValueError(f"`bits` must be one of {list(BITS)}, got {bits}")
        if group < 1 or value_group < 1 or residual < 0:
            raise ValueError(
                f"`group` and `value_group` must be >= 1 and `residual` >= 0, got group={group}, "
                f"value_group={value_group}, residual={residual}"
            )
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"`dtype` must be one of {list(STORAGE_DTYPES)}, got {dtype}")
        self.bits, self.group, self.value_group = bits, group, value_group
        self.residual, self.storage_dtype = residual, dtype

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Empty stores for (batch, kv_heads, *, head_dim) states."""
        m = key_states.shape[-1]
        self.vgroup = min(self.value_group, m)
        if m % self.vgroup or (m * self.bits) % 8:
            raise ValueError(
                f"head_dim {m} must be a multiple of `value_group` ({self.vgroup}) and of {8 // self.bits} "
                f"(codes per byte at {self.bits} bits)"
            )
        self._begin(key_states)
        empty = self._empty
        self.key_codes, self.value_codes = (
            empty(m * self.bits // 8, torch.uint8),
            empty(m * self.bits // 8, torch.uint8),
        )
        self.key_scale, self.key_zero = empty(m, torch.float16), empty(m, torch.float16)
        self.value_scale, self.value_zero = (
            empty(m // self.vgroup, torch.float16),
            empty(m // self.vgroup, torch.float16),
        )
        self.keys, self.values = empty(m, self.storage_dtype), empty(m, self.storage_dtype)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (b, h, t, m) states; return (b, h, seen, m) dequantized keys and values in the model dtype."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen_tokens += key_states.shape[2]
        self.keys = torch.cat([self.keys, key_states.to(self.storage_dtype)], dim=2)
        self.values = torch.cat([self.values, value_states.to(self.storage_dtype)], dim=2)
        count = self._due()
        if count:
            self._quantize_front(count)
        keys = torch.cat([self.dequantized_keys(), self.keys.to(self.dtype)], dim=2)
        values = torch.cat([self.dequantized_values(), self.values.to(self.dtype)], dim=2)
        return keys, values

    def _due(self) -> int:
        """Tokens to quantize now: the whole groups of ``group`` tokens beyond ``residual``."""
        excess = self.keys.shape[2] - self.residual
        return (excess // self.group) * self.group if excess > 0 else 0

    def _quantize_front(self, count: int) -> None:
        b, h, m = self.shape
        keys = self.keys[:, :, :count].reshape(b, h, count // self.group, self.group, m)
        codes, scale, zero = quantize(keys, self.bits, dim=3)  # scale, zero: (b, h, count/G, 1, m)
        self.key_codes = torch.cat([self.key_codes, pack(codes.reshape(b, h, count, m), self.bits)], dim=2)
        self.key_scale = torch.cat([self.key_scale, scale.squeeze(3)], dim=2)
        self.key_zero = torch.cat([self.key_zero, zero.squeeze(3)], dim=2)
        values = self.values[:, :, :count].reshape(b, h, count, m // self.vgroup, self.vgroup)
        codes, scale, zero = quantize(values, self.bits, dim=4)  # scale, zero: (b, h, count, m/Gv, 1)
        self.value_codes = torch.cat([self.value_codes, pack(codes.reshape(b, h, count, m), self.bits)], dim=2)
        self.value_scale = torch.cat([self.value_scale, scale.squeeze(4)], dim=2)
        self.value_zero = torch.cat([self.value_zero, zero.squeeze(4)], dim=2)
        self.keys, self.values = self.keys[:, :, count:].clone(), self.values[:, :, count:].clone()

    @property
    def quantized_length(self) -> int:
        return self.key_codes.shape[2] if self.is_initialized else 0

    def dequantized_keys(self) -> torch.Tensor:
        """(b, h, Tq, m) keys of the quantized tokens, in the model dtype."""
        b, h, m = self.shape
        tq = self.quantized_length
        codes = unpack(self.key_codes, self.bits).reshape(b, h, tq // self.group, self.group, m)
        out = dequantize(codes, self.key_scale.unsqueeze(3), self.key_zero.unsqueeze(3), self.dtype)
        return out.reshape(b, h, tq, m)

    def dequantized_values(self) -> torch.Tensor:
        """(b, h, Tq, m) values of the quantized tokens, in the model dtype."""
        b, h, m = self.shape
        tq = self.quantized_length
        codes = unpack(self.value_codes, self.bits).reshape(b, h, tq, m // self.vgroup, self.vgroup)
        out = dequantize(codes, self.value_scale.unsqueeze(4), self.value_zero.unsqueeze(4), self.dtype)
        return out.reshape(b, h, tq, m)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """Every token is returned: (seen + query_length, offset 0)."""
        return self.seen_tokens + query_length, 0


class KiviCache(PlannedCache):
    """A cache with a ``KiviLayer`` at every full-attention layer (arguments as ``KiviLayer``)."""

    def __init__(
        self,
        config=None,
        *,
        bits: int = 2,
        group: int = 32,
        value_group: int = 32,
        residual: int = 128,
        dtype: torch.dtype = torch.float16,
        num_layers: int | None = None,
    ) -> None:
        KiviLayer(bits, group=group, value_group=value_group, residual=residual, dtype=dtype)  # validate once
        super().__init__(
            lambda _: KiviLayer(bits, group=group, value_group=value_group, residual=residual, dtype=dtype),
            config=config,
            num_layers=num_layers,
        )
        self.bits, self.residual = bits, residual
