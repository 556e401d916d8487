"""Preallocated, geometrically growing storage for one cache layer.

``CodeStore`` holds the sparse codes (atom indices and coefficients) of compressed tokens, s atoms each;
``AdaptiveCodeStore`` holds codes whose length varies per vector (``lexico_chat.adaptive``); ``TokenBuffer``
holds the full-precision recent tokens. All append in place into tensors whose capacity doubles when full, so
appending ``t`` tokens costs O(t) (amortised) and never copies the whole cache; ``reallocations`` counts the
times the storage was replaced (O(log T) for T tokens).
"""

from __future__ import annotations

import torch

from lexico_chat import native
from lexico_chat.attention.codes import pack_indices, unpack_indices

__all__ = ["AdaptiveCodeStore", "CodeStore", "TokenBuffer", "grow_capacity"]

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

    @property
    def read_bits(self) -> int:
        """How ``stored()`` gives the indices to attention: 12 (packed) or 16 (int16)."""
        return self.index_bits

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


class AdaptiveCodeStore:
    """Codes of varying length: ``window_atoms`` atoms per window of ``window`` tokens, 1..``longest`` per token.

    A window's atoms lie in one run, token after token; window w of a (batch, head) row starts at atom
    ``w * window_atoms``, so no offsets are held, only each token's atom count, 4 bits (count - 1), two a byte.

    Attributes
    ----------
    indices : (batch, heads, atom capacity) int16, or with ``index_bits=12`` (batch, heads, 3 * capacity / 2)
        uint8 (two 12-bit indices in three bytes).
    coefs : (batch, heads, atom capacity) in ``coef_dtype``.
    counts : (batch, heads, token capacity / 2) uint8.
    sparsity : ``longest``, the width of the padded codes ``stored()`` gives attention.
    length : tokens stored (a multiple of ``window``); reallocations : as ``CodeStore``.
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        longest: int,
        window: int,
        window_atoms: int,
        coef_dtype: torch.dtype,
        device: torch.device,
        index_bits: int = 16,
    ) -> None:
        if (
            index_bits not in (12, 16)
            or window % 2
            or window_atoms % 2
            or not window <= window_atoms <= window * longest
        ):
            raise ValueError(
                f"need index_bits 12 or 16, an even window and even window_atoms in [window, window * longest], "
                f"got {index_bits}, {window}, {window_atoms}, {longest}"
            )
        self.index_bits, self.sparsity, self.window, self.window_atoms = index_bits, longest, window, window_atoms
        index_dtype = torch.uint8 if index_bits == 12 else torch.int16
        self.indices = torch.empty(batch, heads, 0, dtype=index_dtype, device=device)
        self.coefs = torch.empty(batch, heads, 0, dtype=coef_dtype, device=device)
        self.counts = torch.empty(batch, heads, 0, dtype=torch.uint8, device=device)
        self.length = 0
        self.reallocations = 0

    read_bits = 16  # stored() gives attention int16 indices

    @property
    def capacity(self) -> int:
        """Tokens the held storage takes."""
        return 2 * self.counts.shape[2]

    @property
    def atoms(self) -> int:
        """Atoms of the filled tokens, per (batch, head) row."""
        return self.length // self.window * self.window_atoms

    def _index_width(self, atoms: int) -> int:
        return 3 * atoms // 2 if self.index_bits == 12 else atoms

    def append(self, indices: torch.Tensor, coefs: torch.Tensor, counts: torch.Tensor) -> None:
        """Store whole windows: indices (batch, heads, t, longest) integer and coefs (batch, heads, t, longest)
        float, of which each token's first ``counts`` (batch, heads, t) are its code (``adaptive_codes``)."""
        keep = torch.arange(indices.shape[-1], device=indices.device) < counts.unsqueeze(-1)
        b, h = counts.shape[:2]
        self.append_runs(indices[keep].view(b, h, -1), coefs[keep].view(b, h, -1), counts)

    def append_runs(self, indices: torch.Tensor, coefs: torch.Tensor, counts: torch.Tensor) -> None:
        """Store whole windows as runs: indices (batch, heads, atoms) integer, coefs (batch, heads, atoms), counts
        (batch, heads, t) integer in [1, longest] summing to ``window_atoms`` over each window (``runs()``)."""
        t = counts.shape[2]
        atoms = t // self.window * self.window_atoms
        if t % self.window or tuple(indices.shape[2:]) != (atoms,) or tuple(coefs.shape[2:]) != (atoms,):
            raise ValueError(
                f"need whole windows of {self.window} tokens and {atoms} atoms, got {t} and {tuple(indices.shape)}"
            )
        end = self.length + t
        if end > self.capacity:
            self._reallocate(grow_capacity(self.capacity, end))
        first = self.atoms
        packed = pack_indices(indices) if self.index_bits == 12 else indices.to(torch.int16)
        self.indices[:, :, self._index_width(first) : self._index_width(first + atoms)] = packed
        self.coefs[:, :, first : first + atoms] = _saturate(coefs, self.coefs.dtype)
        nibbles = (counts - 1).to(torch.uint8)
        self.counts[:, :, self.length // 2 : end // 2] = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
        self.length = end

    def _reallocate(self, capacity: int) -> None:
        b, h = self.counts.shape[:2]
        atoms = capacity // self.window * self.window_atoms
        fresh = (
            self.indices.new_zeros(b, h, self._index_width(atoms)),
            self.coefs.new_zeros(b, h, atoms),
            self.counts.new_zeros(b, h, capacity // 2),
        )
        filled = (self._index_width(self.atoms), self.atoms, self.length // 2)
        for new, old, n in zip(fresh, (self.indices, self.coefs, self.counts), filled):
            new[:, :, :n] = old[:, :, :n]
        self.indices, self.coefs, self.counts = fresh
        self.reallocations += 1

    def runs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, heads, atoms) int16 indices (a copy when packed), coefficients (a view) and (batch, heads,
        length) uint8 counts (a copy) of the filled tokens: what ``append_runs`` takes."""
        n = self.atoms
        indices = self.indices[:, :, : self._index_width(n)]
        indices = unpack_indices(indices, n).to(torch.int16) if self.index_bits == 12 else indices
        nibbles = self.counts[:, :, : self.length // 2]
        counts = torch.stack([nibbles & 0xF, nibbles >> 4], dim=-1).flatten(-2) + 1
        return indices, self.coefs[:, :, :n], counts

    def stored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, heads, length, longest) int16 indices and coefficients, each token's code first and zero
        coefficients after it: a transient copy (``native.expand_codes`` where it runs) that attention reads
        as codes of ``longest`` atoms."""
        if native.expands(self.coefs):
            return native.expand_codes(self)
        indices, coefs, counts = self.runs()
        return padded_codes(indices, coefs, counts, self.sparsity)

    view = stored

    def select_batch(self, index: torch.Tensor) -> None:
        """Keep (and reorder) batch rows ``index``."""
        for name in ("indices", "coefs", "counts"):
            setattr(self, name, getattr(self, name).index_select(0, index.to(self.counts.device)))

    def nbytes(self, filled: bool = True) -> int:
        """Bytes of the filled tokens (``filled``) or of the whole held capacity."""
        if not filled:
            return sum(x.numel() * x.element_size() for x in (self.indices, self.coefs, self.counts))
        b, h = self.counts.shape[:2]
        n = self.atoms
        per_row = self._index_width(n) * self.indices.element_size() + n * self.coefs.element_size() + self.length // 2
        return b * h * per_row


def padded_codes(
    indices: torch.Tensor, coefs: torch.Tensor, counts: torch.Tensor, longest: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of codes (batch, heads, atoms) with counts (batch, heads, T) as (batch, heads, T, longest) codes:
    int16 indices (0 past a token's count) and coefficients (0 there)."""
    b, h, t = counts.shape
    keep = torch.arange(longest, device=counts.device) < counts.unsqueeze(-1).to(torch.int64)
    out_idx = torch.zeros(b, h, t, longest, dtype=torch.int16, device=counts.device)
    out_idx.masked_scatter_(keep, indices.to(torch.int16))
    raw = coefs.view(torch.uint8) if coefs.dtype == torch.float8_e4m3fn else coefs
    out_coef = torch.zeros(b, h, t, longest, dtype=raw.dtype, device=counts.device).masked_scatter_(keep, raw)
    return out_idx, out_coef.view(coefs.dtype)


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
