"""Triton device functions shared by the decode kernels: code loading, score epilogue, online softmax."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["code_block", "finish_scores", "online_stats", "tanh"]


@triton.jit
def code_block(idx_ptr, coef_ptr, t, ok, S: tl.constexpr, SP: tl.constexpr, FP8: tl.constexpr):
    """Codes of tokens ``t`` (BLOCK,) of one (batch, head) pair: int32 indices, fp32 coefficients (0 where
    masked), and the (BLOCK, SP) mask. Tokens are rows of S (idx int16, coef fp8-as-uint8 / fp16 / fp32)."""
    j = tl.arange(0, SP)
    offsets = t[:, None] * S + j[None, :]
    mask = ok[:, None] & (j < S)[None, :]
    idx = tl.load(idx_ptr + offsets, mask=mask, other=0).to(tl.int32)
    raw = tl.load(coef_ptr + offsets, mask=mask, other=0)
    if FP8:
        # e4m3 bits b: exponent and mantissa at bits 13..7 of a float16 give |value| * 2**-8 exactly
        bits = raw.to(tl.int32)
        magnitude = ((bits & 0x7F) << 7).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 256.0
        coef = tl.where((bits & 0x80) != 0, -magnitude, magnitude)
    else:
        coef = raw.to(tl.float32)
    return idx, coef, mask


@triton.jit
def tanh(x):
    """tanh through exp (saturates to ±1 without overflow trouble; absolute error ~1e-7)."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def finish_scores(sc, pos, ok, bias_row, softcap, HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr):
    """Scaled scores (BLOCK, GP) at key positions ``pos`` → softcapped, biased, -inf where not ``ok``."""
    if SOFTCAP:
        sc = softcap * tanh(sc / softcap)
    if HAS_BIAS:
        sc += tl.load(bias_row + pos, mask=ok, other=0.0)[:, None]
    return tl.where(ok[:, None], sc, float("-inf"))


@triton.jit
def online_stats(m_i, l_i, sc):
    """Running max ``m_i`` (GP,) and Σ exp(x - m_i) ``l_i`` (GP,) updated with scores ``sc`` (BLOCK, GP)."""
    m_new = tl.maximum(m_i, tl.max(sc, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(sc - m_safe[None, :]), axis=0)
    return m_new, l_i
