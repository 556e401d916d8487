"""Native CPU kernels (``native.c``), built at first use and loaded with ctypes; the PyTorch code they
replace stays the reference and the fallback. This module imports torch and the standard library only.

Three pieces of ``attention.reference`` run here on CPU tensors when the library is available:

* ``rope_scores``: q · R(p_t) k_t for pre-RoPE key codes, each key rebuilt from its s atoms, rotated and
  dotted with its KV head's query rows in one pass (the PyTorch path writes a rebuilt (T, m) tile, rotates
  it in a second pass and multiplies in a third).
* ``rebuild``: a tile of dense vectors (pre-RoPE keys rotated), written straight into the per-query-head
  layout the chunk path's fused attention takes (PyTorch: ``embedding_bag``, a rotation pass and a copy per
  head).
* ``value_weights``: the attention weights of compressed values scattered into atom space, (rows, N) per
  KV head, by plain loops (``scatter_add_`` with its (rows, T·s) index and source tensors costs more than
  the adds).

``expand_codes`` lays out adaptive codes (runs of varying length) as the padded codes those kernels read, and
one step of ``omp``'s selection: ``select_atoms`` takes |c|, masks the atoms already chosen and finds the
first argmax of each row in one pass over the correlations (the PyTorch code makes three).

The library is compiled with the system C compiler (``$CC``, else ``cc``) with ``-O3 -march=native
-fopenmp`` into ``user_cache_folder()/native/``, named by a hash of the source, the flags and the CPU, and
written atomically (a temporary file, then a rename). It links the libgomp torch has already loaded, so
its threads are torch's (``torch.set_num_threads`` holds). Without a compiler, or with ``LEXICO_NATIVE=0``,
``available()`` is False and the PyTorch code runs; the reason is logged once (level INFO).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lexico_chat.paths import user_cache_folder
from lexico_chat.rope import side_by_side

if TYPE_CHECKING:
    from lexico_chat.attention.codes import CompressedKV

__all__ = [
    "ENV_SWITCH",
    "MAX_DIM",
    "available",
    "expand_codes",
    "expands",
    "library",
    "rebuild",
    "rope_scores",
    "select_atoms",
    "selects",
    "usable",
    "value_weights",
]

ENV_SWITCH = "LEXICO_NATIVE"
MAX_DIM = 256  # head_dim and sparsity at most this (native.c's MAX_DIM)
_SOURCE = Path(__file__).with_name("native.c")
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")
_CODE_KINDS = {torch.float8_e4m3fn: 0, torch.float16: 1, torch.bfloat16: 2, torch.float32: 3}
logger = logging.getLogger(__name__)

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_CODES = [_ptr, _i64, _i64, _i64, _int, _ptr, _i64, _i64, _i64, _int]  # indices and coefficients, byte strides
_SIGNATURES = {
    "lexico_rope_scores": [_ptr, _i64, _i64, *_CODES, _ptr, _ptr, _i64, _i64, _int, _ptr, _i64, _i64, _i64]
    + [_int] * 7,
    "lexico_value_weights": [_ptr, _i64, _i64, _i64, *_CODES, _ptr] + [_int] * 7,
    "lexico_rebuild": [*_CODES, _ptr, _ptr, _i64, _i64, _int, _ptr] + [_int] * 7,
    "lexico_select_atoms": [_ptr, _i64, _int, _ptr, _i64, _int, _int, _int, _int],
    "lexico_expand": [_ptr, _i64, _int, _ptr, _i64, _int, _ptr, _i64, _ptr, _ptr] + [_int] * 6,
}  # every kernel ends with its thread count


def _cpu_tag() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags (one line each from /proc/cpuinfo)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(wanted))


def _build(compiler: str, target: Path) -> None:
    """Compile ``native.c`` into ``target`` atomically; raises OSError / CalledProcessError on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=target.stem, suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", temporary], check=True, capture_output=True, text=True, timeout=120
        )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels (built first if needed), or None when they cannot be had (logged once)."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        logger.info("native CPU kernels off: no C compiler (%s) found; the PyTorch path runs instead", compiler)
        return None
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join((compiler, *_FLAGS)).encode() + _cpu_tag().encode())
    target = user_cache_folder() / "native" / f"lexico_native-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", None) or error
        # info, not warning: a warning would print on stderr mid-session (over the TUI) on every machine whose
        # compiler cannot build it (e.g. Apple clang without OpenMP); the PyTorch path gives the same results
        logger.info("native CPU kernels off (%s); the PyTorch path runs instead", str(detail).strip()[:500])
        return None
    for name, argtypes in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, None
    lib.lexico_init()
    return lib


def available() -> bool:
    """Whether the native kernels may run: ``LEXICO_NATIVE`` is not "0" and the library is built and loaded."""
    return os.environ.get(ENV_SWITCH, "1") != "0" and library() is not None


def usable(tensor: torch.Tensor, codes: CompressedKV) -> bool:
    """Whether ``rope_scores``, ``value_weights`` and ``rebuild`` take these codes (``tensor``: any tensor of the
    call, for its device): CPU, supported code dtypes, head_dim a multiple of 8 and it and s within ``MAX_DIM``,
    the library available."""
    return (
        tensor.device.type == "cpu"
        and codes.key_coefs.dtype in _CODE_KINDS
        and codes.value_coefs.dtype in _CODE_KINDS
        and max(codes.key_dictionary.shape[0], codes.key_coefs.shape[-1], codes.value_coefs.shape[-1]) <= MAX_DIM
        and codes.key_dictionary.shape[0] % 8 == 0
        and available()
    )


def _code_args(indices: torch.Tensor, coefs: torch.Tensor, index_bits: int) -> tuple[list, list]:
    """(arguments, tensors to keep alive during the call): pointer, (batch, head, token) byte strides and kind
    of stored indices and coefficients (the last axis made contiguous where it is not)."""
    args, held = [], []
    for x, kind in ((indices, index_bits), (coefs, _CODE_KINDS[coefs.dtype])):
        if x.stride(-1) != 1:
            x = x.contiguous()
        size = x.element_size()
        args += [x.data_ptr(), *(stride * size for stride in x.stride()[:3]), kind]
        held.append(x)
    return args, held


def _rotation(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(tensor kept alive, its cos pointer, batch and token byte strides) of tokens' (cos, sin), each (b or 1,
    t, m/2), side by side per pair as a ``RopeTable`` holds them (a stacked fp32 copy otherwise)."""
    held = cos.dtype in _CODE_KINDS and side_by_side(cos, sin)
    turns = cos if held else torch.stack([cos.float(), sin.float()], dim=-1).flatten(-2)
    size = turns.element_size()
    batch_stride = turns.stride(0) * size if turns.shape[0] > 1 else 0
    return turns, turns.data_ptr(), batch_stride, turns.stride(1) * size


def rope_scores(flat: torch.Tensor, codes: CompressedKV, atoms: torch.Tensor) -> torch.Tensor:
    """Scores of query rows against pre-RoPE compressed keys.

    Parameters
    ----------
    flat : (b, hkv, G, m) float32, scaled queries in ``rope.pair_order`` (the order of ``atoms``).
    codes : compressed tokens with ``key_rope`` set.
    atoms : (N, m) contiguous float32 key atoms in ``rope.pair_order`` (``reference.tile_atoms``).

    Returns
    -------
    (b, hkv, G, T) float32: ``flat · R(p_t) D c_t`` for every compressed token t.
    """
    b, hkv, rows, m = flat.shape
    t, s = codes.length, codes.key_coefs.shape[-1]
    flat = flat.contiguous()
    out = flat.new_empty(b, hkv, rows, t)
    turns, turn_ptr, turn_sb, turn_st = _rotation(*codes.key_rope)
    code_args, _held = _code_args(codes.key_indices, codes.key_coefs, codes.index_bits)
    library().lexico_rope_scores(
        flat.data_ptr(),
        flat.stride(0),
        flat.stride(1),
        *code_args,
        atoms.data_ptr(),
        turn_ptr,
        turn_sb,
        turn_st,
        _CODE_KINDS[turns.dtype],
        out.data_ptr(),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        b,
        hkv,
        rows,
        t,
        s,
        m,
        torch.get_num_threads(),
    )
    return out


def rebuild(
    codes: CompressedKV, start: int, stop: int, atoms: torch.Tensor, *, keys: bool, repeat: int = 1
) -> torch.Tensor:
    """Dense vectors of compressed tokens start..stop, each KV head's written ``repeat`` times.

    Parameters
    ----------
    codes : the compressed tokens; pre-RoPE keys (``key_rope`` set) are rotated by their tokens' (cos, sin).
    start, stop : the tokens, 0 <= start < stop <= ``codes.length``.
    atoms : (N, m) contiguous float32 atoms (``reference.tile_atoms(codes, keys=keys)``: pre-RoPE key atoms in
        ``rope.pair_order``, so the result is in that order too).
    keys : the keys (True) or the values.
    repeat : copies per KV head (the query heads each serves: the layout fused attention kernels take).

    Returns
    -------
    (b, kv_heads * repeat, stop - start, m) float32, contiguous; output head h * repeat + r holds KV head h.
    """
    indices = (codes.key_indices if keys else codes.value_indices)[:, :, start:stop]
    coefs = (codes.key_coefs if keys else codes.value_coefs)[:, :, start:stop]
    b, hkv, t, s = coefs.shape
    m = atoms.shape[1]
    out = atoms.new_empty(b, hkv * repeat, t, m)
    code_args, _held = _code_args(indices, coefs, codes.index_bits)
    if keys and codes.key_rope is not None:
        cos, sin = codes.key_rope
        turns, turn_ptr, turn_sb, turn_st = _rotation(cos[:, start:stop], sin[:, start:stop])
        kind = _CODE_KINDS[turns.dtype]
    else:
        turns, turn_ptr, turn_sb, turn_st, kind = None, None, 0, 0, 0
    library().lexico_rebuild(
        *code_args,
        atoms.data_ptr(),
        turn_ptr,
        turn_sb,
        turn_st,
        kind,
        out.data_ptr(),
        repeat,
        b,
        hkv,
        t,
        s,
        m,
        torch.get_num_threads(),
    )
    return out


def value_weights(probs: torch.Tensor, codes: CompressedKV) -> torch.Tensor:
    """Attention weights of compressed values in atom space.

    Parameters
    ----------
    probs : (b, hkv, G, T) float32 (any strides but the last), the softmax weights of the compressed tokens.
    codes : the compressed tokens.

    Returns
    -------
    (b, hkv, G, N) float32 ``w`` with ``w @ value_dictionary.T`` the compressed tokens' share of the output.
    """
    if probs.stride(-1) != 1:
        probs = probs.contiguous()
    b, hkv, rows, t = probs.shape
    n_atoms = codes.value_dictionary.shape[1]
    weights = probs.new_empty(b, hkv, rows, n_atoms)
    code_args, _held = _code_args(codes.value_indices, codes.value_coefs, codes.index_bits)
    library().lexico_value_weights(
        probs.data_ptr(),
        probs.stride(0),
        probs.stride(1),
        probs.stride(2),
        *code_args,
        weights.data_ptr(),
        b,
        hkv,
        rows,
        t,
        codes.value_coefs.shape[-1],
        n_atoms,
        torch.get_num_threads(),
    )
    return weights


def selects(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``select_atoms`` takes (b, N) correlations of ``dtype`` on ``device`` (rows of unit column stride):
    float32 or bfloat16 on the CPU, the library available."""
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and available()


def select_atoms(corr: torch.Tensor, idx: torch.Tensor, k: int) -> None:
    """One OMP selection step in place: ``idx[:, k]`` = the first index of the largest ``|corr|`` of each row
    among the atoms not in ``idx[:, :k]`` (``first_argmax`` of ``corr.abs()`` with the chosen ones masked).

    Parameters
    ----------
    corr : (b, N) float32 or bfloat16 correlations, row-strided; scratch afterwards (chosen entries become NaN).
    idx : (b, s) int64 with unit column stride; its columns before ``k`` hold the atoms already chosen.
    k : the step, 0 <= k < s.
    """
    if idx.dtype != torch.int64 or idx.stride(-1) != 1:
        raise ValueError("select_atoms needs (b, s) int64 indices with unit column stride")
    bf16 = int(corr.dtype == torch.bfloat16)
    library().lexico_select_atoms(
        corr.data_ptr(),
        corr.stride(0),
        bf16,
        idx.data_ptr(),
        idx.stride(0),
        k,
        corr.shape[0],
        corr.shape[1],
        torch.get_num_threads(),
    )


def expands(coefs: torch.Tensor) -> bool:
    """Whether ``expand_codes`` takes a store with these (batch, heads, atoms) coefficients: CPU, the library
    available."""
    return coefs.device.type == "cpu" and available()


def expand_codes(store) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``AdaptiveCodeStore``'s filled tokens as padded codes, what ``store.padded_codes`` makes of its runs.

    Returns
    -------
    (batch, heads, length, longest) int16 indices and coefficients in the store's dtype: each token's atoms
    first, then index 0 with coefficient 0.
    """
    b, h = store.counts.shape[:2]
    t, longest = store.length, store.sparsity
    out_idx = torch.empty(b, h, t, longest, dtype=torch.int16)
    out_coef = torch.empty(b, h, t, longest, dtype=store.coefs.dtype)
    indices, coefs, counts = (x.contiguous() for x in (store.indices, store.coefs, store.counts))  # as allocated
    library().lexico_expand(
        indices.data_ptr(),
        indices.stride(1) * indices.element_size(),
        store.index_bits,
        coefs.data_ptr(),
        coefs.stride(1) * coefs.element_size(),
        coefs.element_size(),
        counts.data_ptr(),
        counts.stride(1),
        out_idx.data_ptr(),
        out_coef.data_ptr(),
        b * h,
        t,
        longest,
        store.window,
        store.window_atoms,
        torch.get_num_threads(),
    )
    return out_idx, out_coef
