"""The mask of a forward call whose queries see some tokens compressed and others exact.

A Lexico layer compresses so that every query sees exactly what it would see fed one token at a time:
the query at position p sees tokens before ``limit_p`` as codes and the rest in full precision. During
a chunked call some tokens are needed exact by the chunk's first queries and compressed by its last
ones; the layer then holds both copies (codes of tokens [0, Tc), buffer of tokens [B, B + Tb)) and this
mask lets each query see exactly one of them.
"""

from __future__ import annotations

import torch

__all__ = ["overlap_mask"]


def overlap_mask(
    attention_mask: torch.Tensor | None,
    limits: torch.Tensor,
    compressed: int,
    buffer_start: int,
    buffered: int,
) -> torch.Tensor:
    """Boolean mask (True = attend) over the keys as attention sees them: compressed first, then buffer.

    Parameters
    ----------
    attention_mask : what transformers built over absolute key positions [0, B + Tb): None (plain
        causal), a bool mask (b, 1, q, B + Tb) with True = attend, or an additive float mask (0 = attend).
    limits : (q,) int64, the tokens each query sees compressed (non-decreasing, <= ``compressed``).
    compressed : Tc, tokens held as codes (positions 0..Tc-1).
    buffer_start : B, the position of the first buffered token (B <= Tc: the overlap is [B, Tc)).
    buffered : Tb, tokens held in the buffer (positions B..B+Tb-1).

    Returns
    -------
    (b or 1, 1, q, Tc + Tb) bool.
    """
    q = limits.shape[0]
    total = buffer_start + buffered
    device = limits.device
    if attention_mask is None:
        query_pos = torch.arange(total - q, total, device=device)
        allowed = torch.arange(total, device=device)[None, :] <= query_pos[:, None]  # causal
        allowed = allowed.view(1, 1, q, total)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if allowed.shape[-1] != total or allowed.shape[-2] != q:
        raise ValueError(f"attention mask must end in ({q}, {total}) (queries, keys), got {tuple(allowed.shape)}")
    code_pos = torch.arange(compressed, device=device)
    buffer_pos = torch.arange(buffer_start, total, device=device)
    as_code = code_pos[None, :] < limits[:, None]  # (q, Tc): seen compressed
    as_exact = buffer_pos[None, :] >= limits[:, None]  # (q, Tb): seen exact
    codes = allowed[..., :compressed] & as_code
    exact = allowed[..., buffer_start:] & as_exact
    return torch.cat([codes, exact], dim=-1)
