"""Preallocated, geometrically growing storage for one cache layer.

``CodeStore`` holds the sparse codes (atom indices and coefficients) of compressed tokens;
``TokenBuffer`` holds the full-precision recent tokens. Both append in place into a tensor whose
capacity doubles when full, so appending ``t`` tokens costs O(t) (amortised) and never copies the
whole cache; ``reallocations`` counts the times the storage was replaced (O(log T) for T tokens).
"""

from __future__ import annotations

import torch

from lexico_chat.attention.codes import pack_indices, unpack_indices

__all__ = ["CodeStore", "TokenBuffer", "grow_capacity"]

MIN_CAPACITY = 64


def grow_capacity(current: int, needed: int, minimum: int = MIN_CAPACITY) -> int:
    """Smallest ``max(minimum, current) * 2**k`` that is at least ``needed`` (k >= 0)."""
    capacity = max(current, minimum)
    while capacity < needed:
        capacity *= 2
    return capacity


def _saturate(coefs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast coefficients to ``dtype``, clamping to its finite range (fp8/fp16 casts overflow to NaN/inf)."""
    if dtype == torch.float32:
        return coefs.to(dtype)
    limit = torch.finfo(dtype).max
    return coefs.to(torch.float32).clamp(-limit, limit).to(dtype)


class CodeStore:
    """Sparse codes of compressed tokens, filled along the token axis.

    Attributes
    ----------
    indices : atom indices, ``[:, :, :length]`` valid: (batch, heads, capacity, s) int16, or with
        ``index_bits=12`` (dictionaries of at most 4096 atoms) (batch, heads, capacity, 3 * ceil(s / 2))
        uint8, two 12-bit indices in three bytes (``lexico_chat.attention.codes.pack_indices``).
    coefs : (batch, heads, capacity, s) coefficients in ``coef_dtype``.
    length : number of tokens stored.
    reallocations : how many times the storage tensors were replaced by larger ones.
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        sparsity: int,
        coef_dtype: torch.dtype,
        device: torch.device,
        index_bits: int = 16,
    ) -> None:
        if index_bits not in (12, 16):
            raise ValueError(f"index_bits must be 12 or 16, got {index_bits}")
        self.index_bits, self.sparsity = index_bits, sparsity
        width, index_dtype = (3 * -(-sparsity // 2), torch.uint8) if index_bits == 12 else (sparsity, torch.int16)
        self.indices = torch.empty(batch, heads, 0, width, dtype=index_dtype, device=device)
        self.coefs = torch.empty(batch, heads, 0, sparsity, dtype=coef_dtype, device=device)
        self.length = 0
        self.reallocations = 0

    @property
    def capacity(self) -> int:
        return self.indices.shape[2]

    def append(self, indices: torch.Tensor, coefs: torch.Tensor) -> None:
        """Store codes of ``t`` new tokens: indices (batch, heads, t, s) integer, coefs (batch, heads, t, s) float."""
        t = indices.shape[2]
        end = self.length + t
        if end > self.capacity:
            self._reallocate(grow_capacity(self.capacity, end))
        self.indices[:, :, self.length : end] = (
            pack_indices(indices) if self.index_bits == 12 else indices.to(torch.int16)
        )
        self.coefs[:, :, self.length : end] = _saturate(coefs, self.coefs.dtype)
        self.length = end

    def _reallocate(self, capacity: int) -> None:
        b, h, _, width = self.indices.shape
        indices = self.indices.new_zeros(b, h, capacity, width)
        coefs = self.coefs.new_zeros(b, h, capacity, self.sparsity)
        indices[:, :, : self.length] = self.indices[:, :, : self.length]
        coefs[:, :, : self.length] = self.coefs[:, :, : self.length]
        self.indices, self.coefs = indices, coefs
        self.reallocations += 1

    def stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices as stored (int16, or packed uint8) and coefficients of the filled tokens (views, no copy)."""
        return self.indices[:, :, : self.length], self.coefs[:, :, : self.length]

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, heads, length, s) int16 indices (a copy when packed) and coefficients (a view)."""
        indices, coefs = self.stored()
        if self.index_bits == 12:
            indices = unpack_indices(indices, self.sparsity).to(torch.int16)
        return indices, coefs

    def select_batch(self, index: torch.Tensor) -> None:
        """Keep (and reorder) batch rows ``index`` (beam search, batch selection)."""
        self.indices = self.indices.index_select(0, index.to(self.indices.device))
        self.coefs = self.coefs.index_select(0, index.to(self.coefs.device))

    def nbytes(self, filled: bool = True) -> int:
        """Bytes of the filled tokens (``filled``) or of the whole held capacity."""
        tokens = self.length if filled else self.capacity
        b, h, _, width = self.indices.shape
        per_token = width * self.indices.element_size() + self.sparsity * self.coefs.element_size()
        return tokens * b * h * per_token


class TokenBuffer:
    """Full-precision recent tokens: (batch, heads, capacity, head_dim), ``[:, :, :length]`` valid."""

    def __init__(self, batch: int, heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.data = torch.empty(batch, heads, 0, head_dim, dtype=dtype, device=device)
        self.length = 0
        self.reallocations = 0

    @property
    def capacity(self) -> int:
        return self.data.shape[2]

    def append(self, states: torch.Tensor) -> None:
        """Append (batch, heads, t, head_dim) states."""
        end = self.length + states.shape[2]
        if end > self.capacity:
            data = self.data.new_empty(*self.data.shape[:2], grow_capacity(self.capacity, end), self.data.shape[3])
            data[:, :, : self.length] = self.data[:, :, : self.length]
            self.data = data
            self.reallocations += 1
        self.data[:, :, self.length : end] = states
        self.length = end

    def view(self) -> torch.Tensor:
        """(batch, heads, length, head_dim) view of the stored tokens."""
        return self.data[:, :, : self.length]

    def front(self, n: int) -> torch.Tensor:
        """(batch, heads, n, head_dim) view of the oldest ``n`` tokens."""
        return self.data[:, :, :n]

    def drop_front(self, n: int) -> None:
        """Forget the oldest ``n`` tokens; moves the (at most a buffer-full of) remaining ones to the front."""
        rest = self.length - n
        if rest > 0:
            self.data[:, :, :rest] = self.data[:, :, n : self.length].clone()
        self.length = max(rest, 0)

    def select_batch(self, index: torch.Tensor) -> None:
        self.data = self.data.index_select(0, index.to(self.data.device))

    def nbytes(self, filled: bool = True) -> int:
        tokens = self.length if filled else self.capacity
        b, h, _, m = self.data.shape
        return tokens * b * h * m * self.data.element_size()
