"""Group-wise asymmetric integer quantization with bit packing: the arithmetic of the KIVI baseline.

A group of values x_1..x_n is held as b-bit integer codes q_i in [0, L], L = 2^b - 1, plus one fp16
scale and one fp16 zero-point per group:

    x̂_i = q_i · scale + zero,   zero = min x (rounded down to fp16),
                                scale = (max x - zero) / L (rounded up to fp16),  q_i = round((x_i - zero) / scale)

Rounding the zero-point down and the scale up keeps every x_i inside [zero, zero + L · scale], so
each element's error is at most scale / 2 (up to fp32 rounding of the dequantisation). Codes are
packed along the last axis, 8 / b codes per uint8 byte, the first code in the lowest bits.
"""

from __future__ import annotations

import torch

__all__ = ["BITS", "pack", "unpack", "quantize", "dequantize"]

BITS = (2, 4, 8)
_FP16_MAX = torch.finfo(torch.float16).max


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"`bits` must be one of {list(BITS)}, got {bits}")


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack b-bit codes, 8 / b per byte.

    Parameters
    ----------
    codes : (..., n) uint8 codes in [0, 2^bits - 1]; n * bits must be a multiple of 8.
    bits : 2, 4 or 8.

    Returns
    -------
    (..., n * bits / 8) uint8; code j of a byte sits in bits [j·b, (j+1)·b).
    """
    _check_bits(bits)
    per = 8 // bits
    if codes.shape[-1] % per:
        raise ValueError(f"the last axis ({codes.shape[-1]}) must be a multiple of {per} to pack {bits}-bit codes")
    grouped = codes.to(torch.uint8).reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    packed = torch.zeros(grouped.shape[:-1], dtype=torch.uint8, device=codes.device)
    for j in range(per):  # per <= 4 shifts, each over the whole tensor
        packed |= grouped[..., j] << (bits * j)
    return packed


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of ``pack``: (..., k) uint8 bytes → (..., k * 8 / bits) uint8 codes."""
    _check_bits(bits)
    per = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)  # (per,)
    codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # (..., k, per)
    return codes.reshape(*packed.shape[:-1], packed.shape[-1] * per)


def _round_fp16(x: torch.Tensor, direction: float) -> torch.Tensor:
    """fp16 nearest to fp32 ``x`` on the side of ``direction`` (-inf: <= x, +inf: >= x)."""
    h = x.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16)
    wrong = h.float() > x if direction < 0 else h.float() < x
    return torch.where(wrong, torch.nextafter(h, torch.full_like(h, direction)), h)


def quantize(x: torch.Tensor, bits: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``x`` with one (scale, zero) per slice along ``dim`` (the group axis).

    Parameters
    ----------
    x : float tensor (any shape); each group is the set of elements sharing all indices but ``dim``.
    bits : 2, 4 or 8.
    dim : axis the groups run along (reduced by min/max).

    Returns
    -------
    codes : uint8, shape of ``x``, in [0, 2^bits - 1].
    scale, zero : float16, shape of ``x`` with ``dim`` of size 1.
    """
    _check_bits(bits)
    levels = (1 << bits) - 1
    x = x.float()
    low, high = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    zero = _round_fp16(low, float("-inf"))
    scale = _round_fp16((high - zero.float()) / levels, float("inf"))
    short = scale.float() * levels + zero.float() < high  # fp32 round-off of the range: one fp16 step more
    scale = torch.where(short, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    safe = torch.where(scale > 0, scale.float(), torch.ones_like(scale, dtype=torch.float32))
    codes = torch.round((x - zero.float()) / safe).clamp_(0, levels).to(torch.uint8)
    return codes, scale, zero


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """codes · scale + zero (broadcast), computed in fp32 and returned in ``dtype``."""
    return (codes.float() * scale.float() + zero.float()).to(dtype)
