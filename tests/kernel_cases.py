"""Random problems for the Triton kernels and their comparison with the PyTorch path (the reference).

Used by ``tests/test_gpu_kernels.py`` (CPU, TRITON_INTERPRET=1) and by ``benchmarks/gpu_bench.py``'s
self-check on the GPU (which imports it as ``tests.kernel_cases`` from the repository root). Triton is
imported only when a kernel is checked, so the problem builders and ``relative_error`` work without it.
Inputs mimic the cache: codes and buffer are views into larger-capacity storage, the value dictionary
is a (m, N) view of a contiguous (N, m) tensor, and the query is the (b, heads, 1, m) transpose of a
(b, 1, heads, m) tensor, as transformers hands it over.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from lexico_chat.accel import pytorch_path
from lexico_chat.attention import CompressedKV
from lexico_chat.attention.reference import reference_attention
from lexico_chat.omp import omp, reconstruct
from lexico_chat.rope import RopeTable, pair_order

__all__ = ["DecodeCase", "decode_case", "check_decode", "check_omp", "relative_error", "unit_dictionary", "TOLERANCE"]

TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}  # ‖out − ref‖ / ‖ref‖


@dataclass(frozen=True)
class DecodeCase:
    """One decode-attention problem: query (b, heads, 1, m), buffer key/value (b, kv_heads, Tb, m), codes."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    compressed: CompressedKV | None
    mask: torch.Tensor | None
    scaling: float
    softcap: float | None


def unit_dictionary(head_dim: int, atoms: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """(head_dim, atoms) fp32 random unit-norm atoms."""
    d = torch.randn(head_dim, atoms, generator=gen)
    return (d / d.norm(dim=0)).to(device)


def decode_case(
    *,
    batch: int = 1,
    kv_heads: int = 2,
    groups: int = 2,
    head_dim: int = 16,
    atoms: int = 64,
    sparsity: int = 4,
    compressed: int = 17,
    buffer: int = 5,
    dtype: torch.dtype = torch.float32,
    coef_dtype: torch.dtype = torch.float8_e4m3fn,
    softcap: float | None = None,
    mask: bool = False,
    key_space: str = "post_rope",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> DecodeCase:
    """A random problem; ``mask`` adds a random (b, 1, 1, total) bool mask (the last key always attended).

    ``key_space``: "post_rope" codes; "pre_rope" codes with the rotation of each compressed token held as a
    ``RopeTable`` holds it (fp16 cos and sin side by side), atoms in the model's coordinate order; or
    "pre_rope_pairs", the same with the atoms in rotation-pair order as a ``LexicoLayer`` holds them."""
    gen = torch.Generator().manual_seed(seed)
    b, hkv, m, s = batch, kv_heads, head_dim, sparsity

    def stored(shape, make):  # a view of the first shape[2] rows of a larger-capacity tensor, like the stores
        full = make(torch.randn(*shape[:2], shape[2] + 3, *shape[3:], generator=gen))
        return full[:, :, : shape[2]]

    def atom_ids(x):
        return (x.abs() * atoms).long().clamp_max(atoms - 1).to(torch.int16).to(device)

    def coefs(x):
        return (0.7 * x).to(coef_dtype).to(device)

    def states(x):
        return x.to(dtype).to(device)

    codes = None
    if compressed:
        dk = unit_dictionary(m, atoms, gen, device)
        dv = unit_dictionary(m, atoms, gen, device).t().contiguous().t()
        k_idx, k_coef, v_idx, v_coef = (stored((b, hkv, compressed, s), f) for f in (atom_ids, coefs) * 2)
        codes = CompressedKV(k_idx, k_coef, v_idx, v_coef, dk, dv)
        if key_space != "post_rope":
            table = RopeTable()
            angles = torch.rand(b, compressed + 3, m // 2, generator=gen) * 6.3
            table.append(angles.cos().to(device), angles.sin().to(device))
            codes = dataclasses.replace(codes, key_rope=table.view(0, compressed))
        if key_space == "pre_rope_pairs":
            held = dk[pair_order(m, dk.device)].t().contiguous().t()
            codes = dataclasses.replace(codes, key_dictionary=held, key_pairs=True)
    query = (3 * torch.randn(b, 1, hkv * groups, m, generator=gen)).to(dtype).to(device).transpose(1, 2)
    key, value = (stored((b, hkv, buffer, m), states) for _ in range(2))
    allowed = None
    if mask:
        allowed = torch.rand(b, 1, 1, compressed + buffer, generator=gen) > 0.3
        allowed[..., -1] = True
        allowed = allowed.to(device)
    return DecodeCase(query, key, value, codes, allowed, m**-0.5, softcap)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; inf if ``out`` has a NaN or inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_decode(case: DecodeCase, splits: int | None = None) -> float:
    """Relative error of the Triton decode attention against the PyTorch reference path."""
    from lexico_chat.attention.triton_decode import decode_attention  # triton: imported for kernel checks only

    args = (case.query, case.key, case.value, case.compressed, case.mask)
    ref = reference_attention(*args, scaling=case.scaling, softcap=case.softcap)
    out = decode_attention(*args, scaling=case.scaling, softcap=case.softcap, splits=splits)
    if out.shape != ref.shape or out.dtype != ref.dtype:
        raise AssertionError(f"decode_attention gave {tuple(out.shape)} {out.dtype}, expected {tuple(ref.shape)} "
                             f"{ref.dtype}")  # fmt: skip
    return relative_error(out, ref)


def check_omp(
    vectors: torch.Tensor,
    dictionary: torch.Tensor,
    sparsity: int,
    *,
    select_dtype: torch.dtype = torch.float32,
    tol: float = 0.0,
) -> dict[str, float]:
    """Triton OMP against ``lexico_chat.omp.omp`` (PyTorch path) on the same inputs.

    Returns
    -------
    agreement : fraction of vectors whose index lists are identical.
    coef_diff : max |coefficient difference| over those vectors.
    distinct : 1.0 if every vector's indices are distinct.
    error, error_torch : mean relative reconstruction error of the Triton and PyTorch codes.
    """
    from lexico_chat.gpu.pursuit import omp as fused_omp  # triton: imported for kernel checks only

    with pytorch_path():
        idx0, coef0 = omp(vectors, dictionary, sparsity, tol=tol, select_dtype=select_dtype)
    idx1, coef1 = fused_omp(vectors, dictionary, sparsity, tol=tol, select_dtype=select_dtype)
    same = (idx0 == idx1).all(dim=1)
    ordered = idx1.long().sort(dim=1).values
    distinct = bool((ordered[:, 1:] != ordered[:, :-1]).all()) if sparsity > 1 else True
    x = vectors.double()

    def error(idx, coef):
        rebuilt = reconstruct(idx, coef, dictionary).double()
        return ((rebuilt - x).norm(dim=1) / x.norm(dim=1).clamp_min(1e-30)).mean().item()

    diff = (coef0 - coef1)[same].abs().max().item() if bool(same.any()) else 0.0
    return {
        "agreement": same.double().mean().item(),
        "coef_diff": diff,
        "distinct": float(distinct),
        "error": error(idx1, coef1),
        "error_torch": error(idx0, coef0),
    }
