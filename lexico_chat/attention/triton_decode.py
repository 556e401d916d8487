"""Triton decode attention (one query token) over sparse-coded keys/values plus the full-precision buffer.

Work is done per (batch row, KV head) pair ``bh``; its G query heads (GQA group, padded to GP, a power
of two) are handled together, so each code is read once for the whole group. Four launches, fp32 inside:

1. ``_table_kernel``   u[bh, n, g] = scaling · q_g · D_k[:, n] (the (N,) table per query head; stored
   (N, GP) so one gather fetches the whole group), and zeroes the atom-space weights w.
2. ``_scores_kernel``  grid (bh, splits + 1), flash-decoding's split-K: split i scores its slice of
   compressed tokens by gathering u at their s indices and dotting with their coefficients (s gathers
   + s MACs per token and head, 3s bytes of codes read per token instead of 2·head_dim), the last
   program scores the buffer densely; each writes its scores and its softmax statistics (max, Σexp).
   Pre-RoPE codes (``key_rope`` set) have no table: the kernel rebuilds each key from its s atoms (the
   dictionary, N × head_dim, stays in L2), rotates it by its token's (cos, sin) from the rotary table and
   dots it with the query (s·head_dim gathers + MACs per token, shared by the group); step 1 then only
   zeroes w.
3. ``_values_kernel``  merges the statistics into the shared softmax, then scatters p_t · coef_t into
   w[bh, idx_t, g] with atomic adds (compressed splits) or accumulates p_t · v_t (buffer program).
4. ``_output_kernel``  out[b, h·G + g] = Σ_n w[bh, n, g] · D_v[:, n] + buffer part, in the query dtype.

Triton is optional: ``lexico_chat.attention.dispatch`` imports this module only once a CUDA decode step
qualifies (``decode_eligible``); the reference path is ``lexico_chat.attention.reference``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lexico_chat.attention.codes import CompressedKV, coefs_to_float
from lexico_chat.attention.triton_parts import code_block, finish_scores, online_stats
from lexico_chat.gpu.runtime import on_device, pow2, program_slots

__all__ = ["decode_attention", "BLOCK_T", "MAX_SPLITS"]

BLOCK_T = 64  # compressed tokens per loop step
BLOCK_TB = 16  # buffer tokens per loop step
MAX_SPLITS = 64  # compressed splits + the buffer program, per (batch, KV head)
TABLE_BLOCK_N = 64
OUT_BLOCK_N, OUT_BLOCK_D = 64, 16
_NEG = torch.finfo(torch.float32).min
_LENGTHS = ["n_comp", "n_buf", "chunk", "n_split"]


@triton.jit
def _table_kernel(q_ptr, dk_ptr, u_ptr, w_ptr, scaling, kv_heads, n_atoms, head_dim, q_sb, q_sh, q_sd, dk_sd, dk_sn,
                  G: tl.constexpr, GP: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr):  # fmt: skip
    bh, pid_n = tl.program_id(0), tl.program_id(1)
    b, h = bh // kv_heads, bh % kv_heads
    g = tl.arange(0, GP)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    u = tl.zeros((GP, BLOCK_N), tl.float32)
    for d0 in range(0, DP, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        q_mask = (g < G)[:, None] & (d < head_dim)[None, :]
        q = tl.load(q_ptr + b * q_sb + (h * G + g)[:, None] * q_sh + d[None, :] * q_sd, mask=q_mask, other=0.0)
        dk_mask = (d < head_dim)[:, None] & (n < n_atoms)[None, :]
        dk = tl.load(dk_ptr + d[:, None] * dk_sd + n[None, :] * dk_sn, mask=dk_mask, other=0.0)  # (BLOCK_D, BLOCK_N)
        u += tl.sum(q.to(tl.float32)[:, :, None] * dk[None, :, :], axis=1)  # (GP, BLOCK_N)
    out = bh * n_atoms * GP + n[None, :] * GP + g[:, None]  # stored (N, GP) per pair
    keep = (n < n_atoms)[None, :]
    tl.store(u_ptr + out, u * scaling, mask=keep)
    tl.store(w_ptr + out, tl.zeros_like(u), mask=keep)


@triton.jit
def _rope_key_scores(dk_ptr, cos_ptr, sin_ptr, idx, coef, mask, q1, q2, t, ok, b, dk_sd, dk_sn, r_sb, r_st, r_si,
                     half, pair_step, pair_off, HALFP: tl.constexpr):  # fmt: skip
    """Scores (BLOCK_T, GP) of pre-RoPE codes: each key rebuilt from its s atoms, half by half (rotation pair i
    of the model's order is dictionary rows i·pair_step and i·pair_step + pair_off), rotated by its token's
    (cos, sin) and dotted with the scaled query halves q1, q2 (GP, HALFP)."""
    i = tl.arange(0, HALFP)
    i_ok = i < half
    atom = dk_ptr + idx[:, :, None] * dk_sn  # (BLOCK_T, SP, 1) atom columns
    a_mask = mask[:, :, None] & i_ok[None, None, :]
    a1 = tl.load(atom + (i * pair_step)[None, None, :] * dk_sd, mask=a_mask, other=0.0)
    a2 = tl.load(atom + (i * pair_step + pair_off)[None, None, :] * dk_sd, mask=a_mask, other=0.0)
    k1 = tl.sum(a1 * coef[:, :, None], axis=1)  # (BLOCK_T, HALFP)
    k2 = tl.sum(a2 * coef[:, :, None], axis=1)
    r_off = b * r_sb + t[:, None] * r_st + i[None, :] * r_si
    r_mask = ok[:, None] & i_ok[None, :]
    c = tl.load(cos_ptr + r_off, mask=r_mask, other=0.0).to(tl.float32)
    sn = tl.load(sin_ptr + r_off, mask=r_mask, other=0.0).to(tl.float32)
    r1 = k1 * c - k2 * sn
    r2 = k2 * c + k1 * sn
    return tl.sum(r1[:, None, :] * q1[None, :, :], axis=2) + tl.sum(r2[:, None, :] * q2[None, :, :], axis=2)


@triton.jit(do_not_specialize=_LENGTHS)
def _scores_kernel(u_ptr, idx_ptr, coef_ptr, q_ptr, k_ptr, bias_ptr, score_ptr, stats_ptr, scaling, softcap,
                   n_comp, n_buf, chunk, n_split, kv_heads, n_atoms, head_dim,
                   c_sb, c_sh, q_sb, q_sh, q_sd, k_sb, k_sh, k_st, k_sd, bias_sb,
                   dk_ptr, cos_ptr, sin_ptr, dk_sd, dk_sn, r_sb, r_st, r_si, half, pair_step, pair_off,
                   G: tl.constexpr, GP: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, DP: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_TB: tl.constexpr, MAX_SPLITS: tl.constexpr, FP8: tl.constexpr,
                   HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, ROPE: tl.constexpr,
                   HALFP: tl.constexpr):  # fmt: skip
    bh, split = tl.program_id(0), tl.program_id(1)
    b, h = bh // kv_heads, bh % kv_heads
    total = n_comp + n_buf
    g = tl.arange(0, GP)
    rows = score_ptr + bh * total * GP  # (total, GP) scores of this pair
    bias_row = bias_ptr + b * bias_sb
    m_i = tl.full((GP,), float("-inf"), tl.float32)
    l_i = tl.zeros((GP,), tl.float32)
    if split < n_split:
        codes = b * c_sb + h * c_sh
        table = u_ptr + bh * n_atoms * GP
        start = split * chunk
        stop = tl.minimum(start + chunk, n_comp)
        if ROPE:  # the query's two halves, scaled, for the rebuilt keys
            i = tl.arange(0, HALFP)
            q_mask = (g < G)[:, None] & (i < half)[None, :]
            q_row = q_ptr + b * q_sb + (h * G + g)[:, None] * q_sh
            q1 = tl.load(q_row + i[None, :] * q_sd, mask=q_mask, other=0.0).to(tl.float32) * scaling
            q2 = tl.load(q_row + (half + i)[None, :] * q_sd, mask=q_mask, other=0.0).to(tl.float32) * scaling
        for t0 in range(start, stop, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = t < stop
            idx, coef, mask = code_block(idx_ptr + codes, coef_ptr + codes, t, ok, S, SP, FP8)
            if ROPE:
                sc = _rope_key_scores(dk_ptr, cos_ptr, sin_ptr, idx, coef, mask, q1, q2, t, ok, b, dk_sd, dk_sn,
                                      r_sb, r_st, r_si, half, pair_step, pair_off, HALFP)  # fmt: skip
            else:
                u = tl.load(table + idx[:, :, None] * GP + g[None, None, :], mask=mask[:, :, None], other=0.0)
                sc = tl.sum(u * coef[:, :, None], axis=1)  # (BLOCK_T, GP)
            sc = finish_scores(sc, t, ok, bias_row, softcap, HAS_BIAS, SOFTCAP)
            tl.store(rows + t[:, None] * GP + g[None, :], sc, mask=ok[:, None])
            m_i, l_i = online_stats(m_i, l_i, sc)
    else:
        d = tl.arange(0, DP)
        q_mask = (g < G)[:, None] & (d < head_dim)[None, :]
        q = tl.load(q_ptr + b * q_sb + (h * G + g)[:, None] * q_sh + d[None, :] * q_sd, mask=q_mask, other=0.0)
        q = q.to(tl.float32) * scaling  # (GP, DP)
        for t0 in range(0, n_buf, BLOCK_TB):
            t = t0 + tl.arange(0, BLOCK_TB)
            ok = t < n_buf
            k_mask = ok[:, None] & (d < head_dim)[None, :]
            k = tl.load(k_ptr + b * k_sb + h * k_sh + t[:, None] * k_st + d[None, :] * k_sd, mask=k_mask, other=0.0)
            sc = tl.sum(k.to(tl.float32)[:, None, :] * q[None, :, :], axis=2)  # (BLOCK_TB, GP)
            sc = finish_scores(sc, n_comp + t, ok, bias_row, softcap, HAS_BIAS, SOFTCAP)
            tl.store(rows + (n_comp + t)[:, None] * GP + g[None, :], sc, mask=ok[:, None])
            m_i, l_i = online_stats(m_i, l_i, sc)
    stats = stats_ptr + (bh * MAX_SPLITS + split) * 2 * GP
    tl.store(stats + g, m_i)
    tl.store(stats + GP + g, l_i)


@triton.jit(do_not_specialize=_LENGTHS)
def _values_kernel(score_ptr, stats_ptr, idx_ptr, coef_ptr, v_ptr, w_ptr, obuf_ptr,
                   n_comp, n_buf, chunk, n_split, kv_heads, n_atoms, head_dim, c_sb, c_sh, v_sb, v_sh, v_st, v_sd,
                   G: tl.constexpr, GP: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, DP: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_TB: tl.constexpr, MAX_SPLITS: tl.constexpr,
                   FP8: tl.constexpr):  # fmt: skip
    bh, split = tl.program_id(0), tl.program_id(1)
    b, h = bh // kv_heads, bh % kv_heads
    total = n_comp + n_buf
    g = tl.arange(0, GP)
    parts = tl.arange(0, MAX_SPLITS)
    stats = stats_ptr + bh * MAX_SPLITS * 2 * GP + parts[:, None] * 2 * GP + g[None, :]
    m_s = tl.load(stats, mask=(parts <= n_split)[:, None], other=float("-inf"))  # (MAX_SPLITS, GP)
    l_s = tl.load(stats + GP, mask=(parts <= n_split)[:, None], other=0.0)
    m = tl.max(m_s, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)
    inv = 1.0 / tl.sum(l_s * tl.exp(m_s - m[None, :]), axis=0)  # (GP,) shared softmax: p = exp(x - m) * inv
    rows = score_ptr + bh * total * GP
    if split < n_split:
        codes = b * c_sb + h * c_sh
        weights = w_ptr + bh * n_atoms * GP
        start = split * chunk
        stop = tl.minimum(start + chunk, n_comp)
        for t0 in range(start, stop, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = t < stop
            sc = tl.load(rows + t[:, None] * GP + g[None, :], mask=ok[:, None], other=float("-inf"))
            p = tl.exp(sc - m[None, :]) * inv[None, :]  # (BLOCK_T, GP)
            idx, coef, mask = code_block(idx_ptr + codes, coef_ptr + codes, t, ok, S, SP, FP8)
            add_mask = mask[:, :, None] & (g < G)[None, None, :]
            tl.atomic_add(weights + idx[:, :, None] * GP + g[None, None, :], p[:, None, :] * coef[:, :, None],
                          mask=add_mask, sem="relaxed")  # fmt: skip
    else:
        d = tl.arange(0, DP)
        acc = tl.zeros((GP, DP), tl.float32)
        for t0 in range(0, n_buf, BLOCK_TB):
            t = t0 + tl.arange(0, BLOCK_TB)
            ok = t < n_buf
            sc = tl.load(rows + (n_comp + t)[:, None] * GP + g[None, :], mask=ok[:, None], other=float("-inf"))
            p = tl.exp(sc - m[None, :]) * inv[None, :]  # (BLOCK_TB, GP)
            v_mask = ok[:, None] & (d < head_dim)[None, :]
            v = tl.load(v_ptr + b * v_sb + h * v_sh + t[:, None] * v_st + d[None, :] * v_sd, mask=v_mask, other=0.0)
            acc += tl.sum(p[:, :, None] * v.to(tl.float32)[:, None, :], axis=0)
        tl.store(obuf_ptr + bh * GP * DP + g[:, None] * DP + d[None, :], acc)


@triton.jit
def _output_kernel(w_ptr, dv_ptr, obuf_ptr, out_ptr, kv_heads, n_atoms, head_dim, dv_sd, dv_sn,
                   G: tl.constexpr, GP: tl.constexpr, DP: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr):  # fmt: skip
    bh, pid_d = tl.program_id(0), tl.program_id(1)
    b, h = bh // kv_heads, bh % kv_heads
    g = tl.arange(0, GP)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    acc = tl.load(obuf_ptr + bh * GP * DP + g[:, None] * DP + d[None, :], mask=d_ok[None, :], other=0.0)  # (GP, BD)
    for n0 in range(0, n_atoms, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < n_atoms
        w = tl.load(w_ptr + bh * n_atoms * GP + n[:, None] * GP + g[None, :], mask=n_ok[:, None], other=0.0)
        dv = tl.load(dv_ptr + n[:, None] * dv_sn + d[None, :] * dv_sd, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc += tl.sum(w[:, :, None] * dv[:, None, :], axis=0)  # (GP, BLOCK_D)
    out = out_ptr + (b * kv_heads * G + h * G + g)[:, None] * head_dim + d[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(g < G)[:, None] & d_ok[None, :])


def decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed: CompressedKV | None,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    softcap: float | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """Attention of one query token over compressed tokens followed by buffer tokens, in four launches.

    The inputs must satisfy ``lexico_chat.attention.dispatch.decode_eligible`` (which ``compressed_attention``
    checks before calling this); they are not checked again here.

    Parameters
    ----------
    query : (b, heads, 1, m) fp16/bf16/fp32; head h reads KV head h // (heads // kv_heads).
    key, value : (b, kv_heads, Tb, m) buffer tokens (any strides).
    compressed : ``CompressedKV`` of the Tc older tokens (int16 or packed 12-bit indices, the latter
        unpacked to int16 first; fp8 e4m3 / fp16 / fp32
        coefficients; (m, N) fp32 dictionaries), or None.
    attention_mask : None, or (b or 1, 1, 1, Tc + Tb) bool (True = attend) / additive float.
    scaling, softcap : as ``compressed_attention`` (a sliding window, if any, spans every key).
    splits : compressed-token splits per (batch, KV head) (default: enough to fill the device).

    Returns
    -------
    (b, 1, heads, m) in ``query.dtype``.
    """
    compressed = compressed.unpacked() if compressed is not None else None  # the kernels read int16 indices
    b, heads, _, m = query.shape
    kv_heads, n_buf = key.shape[1], key.shape[2]
    n_comp = compressed.length if compressed is not None else 0
    total = n_comp + n_buf
    bh, gp, dp = b * kv_heads, pow2(heads // kv_heads), pow2(m, 16)
    n_atoms = compressed.key_dictionary.shape[1] if n_comp else 0
    n_split, chunk = _split(n_comp, splits if splits is not None else triton.cdiv(program_slots(query.device), bh))
    sizes = [bh * n_atoms * gp, bh * n_atoms * gp, bh * total * gp, bh * MAX_SPLITS * 2 * gp, bh * gp * dp]
    work = torch.empty(sum(sizes), dtype=torch.float32, device=query.device).split(sizes)
    out = torch.empty(b, 1, heads, m, dtype=query.dtype, device=query.device)
    bias = _bias(attention_mask, work[4])
    codes = _all_codes(compressed if n_comp else None, work[4])
    rope = _rope(compressed if n_comp else None, work[4])
    meta = dict(G=heads // kv_heads, GP=gp, DP=dp)
    blocks = dict(S=codes[0].shape[-1] if n_comp else 1, BLOCK_T=BLOCK_T, BLOCK_TB=BLOCK_TB, MAX_SPLITS=MAX_SPLITS)
    blocks["SP"] = pow2(blocks["S"])
    lengths = (n_comp, n_buf, chunk, n_split, kv_heads, n_atoms, m)
    with on_device(query.device):
        _launch(query, key, value, codes, rope, bias, work, out, (scaling, softcap), lengths, meta, blocks)
    return out


def _launch(query, key, value, codes, rope, bias, work, out, scale, lengths, meta, blocks) -> None:
    """The four kernels (three for pre-RoPE codes, which need no table); ``codes`` from ``_all_codes``, ``rope``
    from ``_rope``, ``bias`` from ``_bias``, ``work`` the five workspaces."""
    k_idx, k_coef, k_fp8, v_idx, v_coef, v_fp8, dk, dv = codes
    table, weights, scores, stats, obuf = work
    (scaling, softcap), (bias, bias_sb) = scale, bias
    n_comp, n_split, kv_heads, n_atoms, m = lengths[0], lengths[3], lengths[4], lengths[5], lengths[6]
    bh = query.shape[0] * kv_heads
    q_strides = (query.stride(0), query.stride(1), query.stride(3))
    pre_rope, cos, sin, rope_strides, (pair_step, pair_off) = rope
    if n_comp and pre_rope:
        weights.zero_()  # the table kernel's other job; pre-RoPE scores rebuild keys instead of reading a table
    elif n_comp:
        _table_kernel[(bh, triton.cdiv(n_atoms, TABLE_BLOCK_N))](
            query, dk, table, weights, scaling, kv_heads, n_atoms, m, *q_strides, dk.stride(0), dk.stride(1),
            BLOCK_N=TABLE_BLOCK_N, BLOCK_D=16, **meta,
        )  # fmt: skip
    _scores_kernel[(bh, n_split + 1)](
        table, k_idx, k_coef, query, key, bias, scores, stats, scaling, softcap or 1.0, *lengths,
        *k_idx.stride()[:2], *q_strides, *key.stride(), bias_sb,
        dk, cos, sin, dk.stride(0), dk.stride(1), *rope_strides, m // 2, pair_step, pair_off,
        FP8=k_fp8, HAS_BIAS=bias_sb >= 0, SOFTCAP=softcap is not None, ROPE=pre_rope, HALFP=pow2(max(m // 2, 1), 16),
        **meta, **blocks,
    )  # fmt: skip
    _values_kernel[(bh, n_split + 1)](
        scores, stats, v_idx, v_coef, value, weights, obuf, *lengths, *v_idx.stride()[:2], *value.stride(),
        FP8=v_fp8, **meta, **blocks,
    )  # fmt: skip
    _output_kernel[(bh, triton.cdiv(m, OUT_BLOCK_D))](
        weights, dv, obuf, out, kv_heads, n_atoms, m, dv.stride(0), dv.stride(1),
        BLOCK_N=OUT_BLOCK_N, BLOCK_D=OUT_BLOCK_D, **meta,
    )  # fmt: skip


def _split(n_comp: int, target: int) -> tuple[int, int]:
    """(splits, tokens per split) for ``n_comp`` compressed tokens: about ``target`` splits of whole blocks."""
    if n_comp == 0:
        return 0, 0
    blocks = triton.cdiv(n_comp, BLOCK_T)
    want = max(1, min(target, blocks, MAX_SPLITS - 1))
    chunk = triton.cdiv(blocks, want) * BLOCK_T
    return triton.cdiv(n_comp, chunk), chunk


def _all_codes(compressed: CompressedKV | None, dummy: torch.Tensor) -> tuple:
    """(key idx, key coefs, key fp8?, value idx, value coefs, value fp8?, D_k, D_v); dummies without codes."""
    if compressed is None:
        stub = dummy.view(1, 1, 1, -1)
        return stub, stub, False, stub, stub, False, stub, stub
    keys = _codes(compressed.key_indices, compressed.key_coefs)
    values = _codes(compressed.value_indices, compressed.value_coefs)
    return (*keys, *values, compressed.key_dictionary, compressed.value_dictionary)


def _rope(compressed: CompressedKV | None, dummy: torch.Tensor) -> tuple:
    """(pre-RoPE?, cos, sin, (batch, token, pair) strides of both, (pair_step, pair_off)) for the scores
    kernel: pair i of the model's order is dictionary rows i·pair_step and i·pair_step + pair_off."""
    if compressed is None or compressed.key_rope is None:
        return False, dummy, dummy, (0, 0, 0), (1, 0)
    cos, sin = compressed.key_rope
    if sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    strides = (cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(1), cos.stride(2))
    half = compressed.key_dictionary.shape[0] // 2
    return True, cos, sin, strides, (2, 1) if compressed.key_pairs else (1, half)


def _codes(indices: torch.Tensor, coefs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(b, h, T, s) codes with rows of s contiguous and equal strides; fp8 coefficients as their uint8 bits."""
    s = indices.shape[-1]
    if indices.stride(-1) != 1 or indices.stride(-2) != s or coefs.stride() != indices.stride():
        indices, coefs = indices.contiguous(), coefs.contiguous()
    if coefs.dtype == torch.float8_e4m3fn:
        return indices, coefs.view(torch.uint8), True
    if coefs.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        coefs = coefs_to_float(coefs)
    return indices, coefs, False


def _bias(mask: torch.Tensor | None, dummy: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Additive fp32 key bias (b or 1, total) and its batch stride (0 when shared; -1: no mask) from a
    (., 1, 1, total) mask."""
    if mask is None:
        return dummy, -1
    row = mask[:, 0, 0]
    if row.dtype == torch.bool:
        bias = torch.zeros(row.shape, dtype=torch.float32, device=row.device).masked_fill_(~row, _NEG)
    else:
        bias = row.to(torch.float32).contiguous()
    return bias, bias.stride(0) if bias.shape[0] > 1 else 0
