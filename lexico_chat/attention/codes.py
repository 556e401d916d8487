"""What attention reads of a compressed layer: ``CompressedKV`` (the codes and dictionaries) and ``LAYER_TAG``.

``LAYER_TAG`` is how the registered attention finds the compressed store: a cache layer returns its
buffer keys (and the cache its values) with the layer attached under this attribute name; the attention
reads ``layer.compressed_length`` and ``layer.compressed()`` from it, by duck typing. This module imports
nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CompressedKV", "LAYER_TAG", "coefs_to_float"]

LAYER_TAG = "_lexico_layer"


@dataclass(frozen=True)
class CompressedKV:
    """The compressed tokens of one layer, as attention reads them.

    Attributes
    ----------
    key_indices, value_indices : (batch, kv_heads, T, s) integer atom indices (int16 as stored).
    key_coefs, value_coefs : (batch, kv_heads, T, s) coefficients (any float dtype, fp8 included).
    key_dictionary, value_dictionary : (head_dim, N) float32 atoms on the same device.
    key_rope : None for post-RoPE key codes; for pre-RoPE codes the half-width (cos, sin) of the
        compressed tokens, each (batch, T, head_dim / 2) float32.
    """

    key_indices: torch.Tensor
    key_coefs: torch.Tensor
    value_indices: torch.Tensor
    value_coefs: torch.Tensor
    key_dictionary: torch.Tensor
    value_dictionary: torch.Tensor
    key_rope: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def length(self) -> int:
        return self.key_indices.shape[2]


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
