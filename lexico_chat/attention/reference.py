"""The PyTorch path (the reference, and the CPU fallback) of attention over sparse-coded keys/values plus a
full-precision buffer, in the compressed domain.

For a query q and a compressed key ``k_t = D_k[:, idx_t] @ coef_t``:

    q · k_t = Σ_j (qᵀ D_k)[idx_t,j] · coef_t,j         u = qᵀ D_k is one (N,) table per query row

and for attention weights a_t over compressed values:

    Σ_t a_t v_t = D_v @ w,    w = Σ_t a_t · scatter(idx_t, coef_t)   (N,) per query row

Compressed and buffer scores share one softmax.

Pre-RoPE key codes (``key_rope`` set) cannot use the table: the rotation of token t depends on its
position, so q · R(p_t) D_k c_t is not a lookup in one (N,) table. Their keys are rebuilt
``TILE_TOKENS`` at a time (``embedding_bag``, s atoms per token), rotated, and scored with one GEMM per
tile; the tile is freed at once, so memory stays bounded by one tile, at O(T·s·m) work per query row
instead of O(N·m + T·s). A layer stores pre-RoPE atoms with each rotation pair side by side
(``rope.pair_order``), so a rebuilt tile is rotated by one complex multiply and the query is reordered
to match.

* Scores: the (rows, N) tables of every KV head are stacked into one (heads·N, rows) table and each
  compressed token's score row is a weighted sum of s table rows — exactly what ``embedding_bag``
  (mode "sum", per-sample weights) computes in one fused call, without a (rows, T, s) intermediate.
* Values, few query rows (decode: rows = GQA group ≤ ``VALUES_SPARSE_MAX_ROWS``): the weights are
  scattered into atom space, w (rows, N), then one product with D_v; nothing of size (T, head_dim).
* Values, many query rows (prefill chunks): scattering rows·T·s products is memory bound and slow,
  so compressed values are rebuilt ``TILE_TOKENS`` at a time (a bounded (TILE_TOKENS, head_dim) tile
  made by ``embedding_bag`` and freed at once) and multiplied by the weights with a GEMM; the rebuild
  is shared by all query rows.

Query rows are processed in blocks so that no intermediate exceeds ``BLOCK_ELEMENTS`` floats.
Stored codes are read ``TILE_TOKENS`` tokens at a time in every path: a tile's coefficients are decoded
to fp32 (and its indices widened) just before use, so no step makes an fp32 copy of the whole store.
Tiles of 4,096 tokens (3 MB of rebuilt fp32 keys for 3 KV heads of 64) make fewer, larger calls than 1,024: on
2 CPU cores at a 4k context a decode step of imported codes took 159-170 ms against 213-257, and ``eval speed``
(window compression included) 220 ms against 245.
All arithmetic is fp32; the output is cast to the query dtype.

On the CPU three pieces run in ``lexico_chat.native`` (C, built at first use) where they apply: the pre-RoPE
key scores (rebuild, rotate and dot per key, no tile written), the value weights in atom space (plain loops
instead of ``scatter_add_``) and the dense tiles of ``dense_tiles`` (rebuilt straight into the per-head layout).
``LEXICO_NATIVE=0``, or a machine without a C compiler, gives the PyTorch code below; tests compare both with
dense float64 references.
"""

from __future__ import annotations

import torch

from lexico_chat import native
from lexico_chat.attention.codes import CompressedKV, coefs_to_float, stored_indices
from lexico_chat.rope import pair_order, rotate_pairs_

__all__ = [
    "attention_bias",
    "code_tiles",
    "dense_tiles",
    "rebuild_tile",
    "rebuilt_keys",
    "reference_attention",
    "repeat_heads",
    "tile_atoms",
    "VALUES_SPARSE_MAX_ROWS",
    "TILE_TOKENS",
    "BLOCK_ELEMENTS",
]

VALUES_SPARSE_MAX_ROWS = 8  # query rows per KV head (GQA group x query tokens) scattered in atom space
TILE_TOKENS = 4096  # stored tokens decoded (and keys or values rebuilt) at once
BLOCK_ELEMENTS = 1 << 23  # cap on the elements of one query block's score / scatter intermediates
_NEG = torch.finfo(torch.float32).min


def attention_bias(
    mask: torch.Tensor | None,
    q_len: int,
    total: int,
    kv_heads: int,
    groups: int,
    sliding_window: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """Additive fp32 bias for ``total`` keys (compressed first, then buffer), or None when nothing is masked.

    Parameters
    ----------
    mask : None (causal, keys at absolute positions 0..total-1, queries the last ``q_len`` of them),
        a bool mask (b, 1 or heads, q_len, total) with True = attend, or an additive float mask.
    sliding_window : with ``mask=None``, keys at distance >= sliding_window are masked too.
    device : where the causal mask is built when ``mask`` is None.

    Returns
    -------
    (b or 1, kv_heads or 1, groups or 1, q_len, total) float32, 0 where attended, fp32 min elsewhere.
    """
    if mask is None:
        if q_len == 1 and (sliding_window is None or sliding_window >= total):
            return None
        q_pos = torch.arange(total - q_len, total, device=device).unsqueeze(1)
        k_pos = torch.arange(total, device=device).unsqueeze(0)
        allowed = k_pos <= q_pos
        if sliding_window is not None:
            allowed &= q_pos - k_pos < sliding_window
        mask = allowed.view(1, 1, q_len, total)
    if mask.shape[-1] != total or mask.shape[-2] != q_len:
        raise ValueError(f"attention mask must end in ({q_len}, {total}) (queries, keys), got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        bias = torch.where(mask, 0.0, _NEG).to(torch.float32)
    else:
        bias = mask.to(torch.float32)
    heads = bias.shape[1]
    if heads == 1:
        return bias.view(bias.shape[0], 1, 1, q_len, total)
    return bias.view(bias.shape[0], kv_heads, groups, q_len, total)


def reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    compressed: CompressedKV | None,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    softcap: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Attention of ``query`` over compressed tokens followed by buffer tokens, in PyTorch (any device).

    Parameters
    ----------
    query : (b, heads, q_len, m) any float dtype; head h reads KV head h // (heads // kv_heads).
    key, value : (b, kv_heads, Tb, m) buffer tokens (the most recent ones).
    compressed : codes of the Tc older tokens, or None (plain eager attention on the buffer).
    attention_mask : see ``attention_bias``; its key axis is (Tc + Tb), compressed tokens first.
    scaling : multiplier of q·k; softcap : optional ``tanh(x / c) * c`` of the scaled scores.

    Returns
    -------
    (b, q_len, heads, m) in ``query.dtype``.
    """
    b, heads, q_len, m = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    codes = compressed if compressed is not None and compressed.length else None
    n_comp = codes.length if codes is not None else 0
    total = n_comp + key.shape[2]
    bias = attention_bias(attention_mask, q_len, total, kv_heads, groups, sliding_window, query.device)
    q5 = (query.to(torch.float32) * scaling).reshape(b, kv_heads, groups, q_len, m)  # (b, hkv, g, q, m)
    k32, v32 = key.to(torch.float32), value.to(torch.float32)
    sparse = groups * q_len <= VALUES_SPARSE_MAX_ROWS
    per_row = b * kv_heads * groups * max(total, n_comp * codes.value_coefs.shape[-1] if sparse and codes else 0)
    rows = max(1, min(q_len, BLOCK_ELEMENTS // max(per_row, 1)))
    blocks = []
    for start in range(0, q_len, rows):
        part = None if bias is None else bias[..., start : start + rows, :]
        blocks.append(_attend(q5[:, :, :, start : start + rows], k32, v32, codes, part, softcap, sparse))
    out = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=3)  # (b, hkv, g, q, m)
    return out.reshape(b, heads, q_len, m).transpose(1, 2).to(query.dtype).contiguous()


def _attend(q5, k32, v32, codes: CompressedKV | None, bias, softcap, sparse: bool) -> torch.Tensor:
    # q5: (b, hkv, g, r, m) scaled fp32; k32/v32: (b, hkv, Tb, m); bias: (.., r, total) or None
    b, hkv, g, r, m = q5.shape
    flat = q5.reshape(b, hkv, g * r, m)
    n_comp = codes.length if codes is not None else 0
    parts = [flat @ k32.transpose(-1, -2)]  # (b, hkv, G, Tb)
    if codes is not None:
        parts.insert(0, _compressed_scores(flat, codes) if codes.key_rope is None else _rope_scores(flat, codes))
    scores = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    scores = scores.view(b, hkv, g, r, -1)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if bias is not None:
        scores = scores + bias
    probs = torch.softmax(scores, dim=-1).view(b, hkv, g * r, -1)
    out = probs[..., n_comp:] @ v32  # (b, hkv, G, m)
    if codes is not None:
        comp = probs[..., :n_comp]
        out = out + (_sparse_values(comp, codes) if sparse else _tiled_values(comp, codes))
    return out.view(b, hkv, g, r, m)


def _compressed_scores(flat: torch.Tensor, codes: CompressedKV) -> torch.Tensor:
    # flat: (b, hkv, G, m) -> (b, hkv, G, T)
    b, hkv, rows, _ = flat.shape
    s = codes.key_coefs.shape[-1]
    n_atoms = codes.key_dictionary.shape[1]
    table = flat @ codes.key_dictionary  # (b, hkv, G, N): one GEMM, batch folded into rows
    table = table.transpose(-1, -2).reshape(b * hkv * n_atoms, rows)  # uᵀ per head, stacked head after head
    offsets = torch.arange(0, b * hkv * n_atoms, n_atoms, dtype=torch.int32, device=flat.device).view(b, hkv, 1, 1)
    parts = []
    for _start, indices, coefs in code_tiles(codes.key_indices, codes.key_coefs, codes.index_bits):
        t = indices.shape[2]
        bags = (indices + offsets).view(b * hkv * t, s)  # int32 table rows, s per token
        scores = torch.nn.functional.embedding_bag(
            bags, table, per_sample_weights=coefs.reshape(b * hkv * t, s), mode="sum"
        )  # (b * hkv * t, G)
        parts.append(scores.view(b, hkv, t, rows).transpose(-1, -2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def code_tiles(indices: torch.Tensor, coefs: torch.Tensor, index_bits: int):
    """(start, int32 indices, fp32 coefs), each (b, hkv, t, s), of ``TILE_TOKENS`` stored tokens at a time:
    codes are decoded one tile at a time, never for the whole store (no wide copy of every code per step)."""
    s = coefs.shape[-1]
    for start in range(0, indices.shape[2], TILE_TOKENS):
        stop = start + TILE_TOKENS
        yield start, stored_indices(indices[:, :, start:stop], s, index_bits), coefs_to_float(coefs[:, :, start:stop])


def _rope_scores(flat: torch.Tensor, codes: CompressedKV) -> torch.Tensor:
    # flat: (b, hkv, G, m) -> (b, hkv, G, T); keys rebuilt (in rotation-pair order) and rotated one tile at a time
    atoms = tile_atoms(codes, keys=True)
    flat = flat[..., pair_order(flat.shape[-1], flat.device)].contiguous()  # the keys' order: same dot products
    if native.usable(flat, codes):  # CPU: rebuild, rotate and dot in one pass, no tile written
        return native.rope_scores(flat, codes, atoms)
    parts = []
    for start, indices, coefs in code_tiles(codes.key_indices, codes.key_coefs, codes.index_bits):
        keys = rebuilt_keys(codes, start, indices, coefs, atoms)
        parts.append(flat @ keys.transpose(-1, -2))  # keys: (b, hkv, t, m)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _sparse_values(probs: torch.Tensor, codes: CompressedKV) -> torch.Tensor:
    # probs: (b, hkv, G, T) -> (b, hkv, G, m)
    if native.usable(probs, codes):
        return native.value_weights(probs, codes) @ codes.value_dictionary.t()
    b, hkv, rows, _ = probs.shape
    s = codes.value_coefs.shape[-1]
    weights = probs.new_zeros(b, hkv, rows, codes.value_dictionary.shape[1])  # (b, hkv, G, N)
    for start, indices, coefs in code_tiles(codes.value_indices, codes.value_coefs, codes.index_bits):
        t = indices.shape[2]
        src = (probs[..., start : start + t, None] * coefs.unsqueeze(2)).reshape(b, hkv, rows, t * s)
        index = indices.long().reshape(b, hkv, 1, t * s).expand(b, hkv, rows, t * s)
        weights.scatter_add_(-1, index, src)
    return weights @ codes.value_dictionary.t()


def tile_atoms(codes: CompressedKV, *, keys: bool) -> torch.Tensor:
    """(N, m) contiguous fp32 atoms ``rebuild_tile`` reads for the keys or the values of ``codes``: pre-RoPE key
    atoms in ``rope.pair_order`` (free when a layer holds them so, a reordered copy otherwise)."""
    atoms = (codes.key_dictionary if keys else codes.value_dictionary).t()
    if keys and codes.key_rope is not None and not codes.key_pairs:
        atoms = atoms[:, pair_order(atoms.shape[1], atoms.device)]
    return atoms if atoms.is_contiguous() else atoms.contiguous()


def rebuilt_keys(codes: CompressedKV, start: int, indices: torch.Tensor, coefs: torch.Tensor, atoms: torch.Tensor):
    """The keys of one tile (from ``code_tiles``) as attention scores them: rebuilt over ``tile_atoms(codes,
    keys=True)``, and for pre-RoPE codes rotated in place by their tokens' (cos, sin) -> (b, hkv, t, m) fp32."""
    keys = rebuild_tile(indices, coefs, atoms)
    if codes.key_rope is None:
        return keys
    stop = start + indices.shape[2]
    cos, sin = codes.key_rope
    return rotate_pairs_(keys, cos[:, None, start:stop], sin[:, None, start:stop])


def rebuild_tile(indices: torch.Tensor, coefs: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Dense vectors of one tile of codes: (b, hkv, t, s) int32 indices and fp32 coefs (as ``code_tiles`` gives
    them) over (N, m) contiguous ``atoms`` -> (b, hkv, t, m) fp32, by one ``embedding_bag``."""
    b, hkv, t, s = indices.shape
    flat = torch.nn.functional.embedding_bag(
        indices.reshape(-1, s), atoms, per_sample_weights=coefs.reshape(-1, s), mode="sum"
    )
    return flat.view(b, hkv, t, atoms.shape[1])


def _tiled_values(probs: torch.Tensor, codes: CompressedKV) -> torch.Tensor:
    # probs: (b, hkv, G, T) -> (b, hkv, G, m)
    out = None
    for start, values in dense_tiles(codes, keys=False):
        part = probs[..., start : start + values.shape[2]] @ values
        out = part if out is None else out + part
    return out


def dense_tiles(codes: CompressedKV, *, keys: bool, repeat: int = 1):
    """(start, tile) for every ``TILE_TOKENS`` compressed tokens: the keys as attention scores them (pre-RoPE keys
    rotated, in ``rope.pair_order``) or the values, dense, each KV head's repeated ``repeat`` times ->
    (b, hkv * repeat, t, m) fp32 (``native.rebuild`` on the CPU, else ``rebuilt_keys`` / ``rebuild_tile``)."""
    atoms = tile_atoms(codes, keys=keys)  # (N, m); free when the layer stores it so
    if native.usable(atoms, codes):
        for start in range(0, codes.length, TILE_TOKENS):
            stop = min(start + TILE_TOKENS, codes.length)
            yield start, native.rebuild(codes, start, stop, atoms, keys=keys, repeat=repeat)
        return
    indices, coefs = (codes.key_indices, codes.key_coefs) if keys else (codes.value_indices, codes.value_coefs)
    for start, idx, coef in code_tiles(indices, coefs, codes.index_bits):
        tile = rebuilt_keys(codes, start, idx, coef, atoms) if keys else rebuild_tile(idx, coef, atoms)
        yield start, repeat_heads(tile, repeat)


def repeat_heads(x: torch.Tensor, repeat: int) -> torch.Tensor:
    """(b, kv_heads, t, m) -> (b, kv_heads * repeat, t, m): KV head j serves heads j*repeat .. j*repeat+repeat-1."""
    if repeat == 1:
        return x
    b, hkv, t, m = x.shape
    return x.unsqueeze(2).expand(b, hkv, repeat, t, m).reshape(b, hkv * repeat, t, m)
