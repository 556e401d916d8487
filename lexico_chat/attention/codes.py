"""What attention reads of a compressed layer: ``CompressedKV`` (the codes and dictionaries) and ``LAYER_TAG``.

``LAYER_TAG`` is how the registered attention finds the compressed store: a cache layer returns its
buffer keys (and the cache its values) with the layer attached under this attribute name; the attention
reads ``layer.compressed_length`` and ``layer.compressed()`` from it, by duck typing. This module imports
nothing of the project.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = [
    "CompressedKV",
    "LAYER_TAG",
    "PACKED_MAX_ATOMS",
    "index_bits_for",
    "coefs_to_float",
    "pack_indices",
    "unpack_indices",
    "stored_indices",
]

LAYER_TAG = "_lexico_layer"
PACKED_MAX_ATOMS = 4096  # dictionaries up to this size store 12-bit indices, two in three bytes


def index_bits_for(atoms: int) -> int:
    """Bits a stored index takes for a dictionary of ``atoms``: 12 (packed) up to ``PACKED_MAX_ATOMS``, else 16."""
    return 12 if atoms <= PACKED_MAX_ATOMS else 16


@dataclass(frozen=True)
class CompressedKV:
    """The compressed tokens of one layer, as attention reads them.

    Attributes
    ----------
    key_indices, value_indices : atom indices as stored: (batch, kv_heads, T, s) int16 when ``index_bits``
        is 16, or (batch, kv_heads, T, 3 * ceil(s / 2)) uint8 packed 12-bit indices when it is 12 (see
        ``pack_indices``; read them with ``stored_indices``).
    key_coefs, value_coefs : (batch, kv_heads, T, s) coefficients (any float dtype, fp8 included); their
        last axis is the sparsity s.
    key_dictionary, value_dictionary : (head_dim, N) float32 atoms on the same device.
    key_rope : None for post-RoPE key codes; for pre-RoPE codes the half-width (cos, sin) of the
        compressed tokens, each (batch, T, head_dim / 2) any float dtype.
    key_pairs : for pre-RoPE codes, True when ``key_dictionary``'s rows are in ``rope.pair_order`` (each
        rotation pair side by side) and its transpose is contiguous, as a ``LexicoLayer`` stores them: keys are
        then rebuilt in that order and rotated by one complex multiply. False: the model's own order (a
        reordered copy of the atoms is made at each call).
    """

    key_indices: torch.Tensor
    key_coefs: torch.Tensor
    value_indices: torch.Tensor
    value_coefs: torch.Tensor
    key_dictionary: torch.Tensor
    value_dictionary: torch.Tensor
    key_rope: tuple[torch.Tensor, torch.Tensor] | None = None
    index_bits: int = 16
    key_pairs: bool = False

    @property
    def length(self) -> int:
        return self.key_indices.shape[2]

    def unpacked(self) -> CompressedKV:
        """The same codes with (batch, kv_heads, T, s) int16 indices (a copy when they are packed)."""
        if self.index_bits == 16:
            return self
        key_idx = unpack_indices(self.key_indices, self.key_coefs.shape[-1]).to(torch.int16)
        value_idx = unpack_indices(self.value_indices, self.value_coefs.shape[-1]).to(torch.int16)
        return dataclasses.replace(self, key_indices=key_idx, value_indices=value_idx, index_bits=16)


def pack_indices(indices: torch.Tensor) -> torch.Tensor:
    """Indices in [0, 4096) as 12 bits each, two in three bytes (an odd last one padded with index 0).

    Parameters
    ----------
    indices : (..., s) any integer dtype, values in [0, ``PACKED_MAX_ATOMS``).

    Returns
    -------
    (..., 3 * ceil(s / 2)) uint8: for each pair (a, b), bytes ``a & 0xFF``, ``a >> 8 | (b & 0xF) << 4``,
    ``b >> 4``.
    """
    x = indices.to(torch.int32)
    if x.shape[-1] % 2:
        x = torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    packed = torch.stack([a & 0xFF, (a >> 8) | ((b & 0xF) << 4), b >> 4], dim=-1)  # (..., s/2, 3)
    return packed.to(torch.uint8).flatten(-2)


def unpack_indices(packed: torch.Tensor, sparsity: int) -> torch.Tensor:
    """Inverse of ``pack_indices``: (..., 3 * ceil(s / 2)) uint8 -> (..., s) int32 (any strides but the last).

    The bytes are widened to int16 only (every intermediate is below 4096) and each index of a pair is written
    straight into the int32 result: this runs over every stored code at every decode step, and takes about
    two thirds of the time of int32 arithmetic and a stack.
    """
    p = packed.unflatten(-1, (-1, 3)).to(torch.int16)
    out = torch.empty(*p.shape[:-1], 2, dtype=torch.int32, device=packed.device)
    torch.bitwise_or(p[..., 0], (p[..., 1] & 0xF) << 8, out=out[..., 0])
    torch.bitwise_or(p[..., 1] >> 4, p[..., 2] << 4, out=out[..., 1])
    return out.flatten(-2)[..., :sparsity]


def stored_indices(indices: torch.Tensor, sparsity: int, index_bits: int) -> torch.Tensor:
    """Stored indices (int16, or packed uint8 when ``index_bits`` is 12) as (..., s) int32."""
    return unpack_indices(indices, sparsity) if index_bits == 12 else indices.to(torch.int32)


def coefs_to_float(coefs: torch.Tensor) -> torch.Tensor:
    """Stored coefficients (any float dtype) as fp32; float8_e4m3fn is decoded by bit arithmetic.

    torch's fp8 -> fp32 cast is scalar on CPU (~5x slower than these five vectorised integer ops).
    Placing the e4m3 sign at bit 15 and exponent/mantissa at bits 13..7 of a float16 gives exactly
    value * 2**-8 for normal and subnormal e4m3 numbers alike (NaN is never stored: values saturate).

    Parameters
    ----------
    coefs : (...) coefficients in any float dtype.

    Returns
    -------
    (...) float32, same shape.
    """
    if coefs.dtype != torch.float8_e4m3fn:
        return coefs.to(torch.float32)
    bits = coefs.view(torch.uint8).to(torch.int16)
    half = ((bits & 0x80) << 8) | ((bits & 0x7F) << 7)
    return half.view(torch.float16).to(torch.float32).mul_(256.0)
