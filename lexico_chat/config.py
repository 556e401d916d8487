"""``CacheConfig``: the one source of every KV-cache setting (kind, sparsity, dictionary size, buffer,
window, storage dtypes).

Every constructor that needs a setting takes a ``CacheConfig``; argparse defaults read its fields; the
checks live in ``__post_init__`` (what can be checked without a model) and ``validate(dims, dictionary)``
(what depends on the model and the dictionary). This module imports nothing heavy (no torch), so the
CLI and the TUI can use it freely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lexico_chat.errors import LexicoError

__all__ = [
    "CacheConfig",
    "CACHE_KINDS",
    "DEFAULT_KEY_SPACE",
    "KEY_SPACES",
    "COEF_DTYPES",
    "SELECT_DTYPES",
    "BUFFER_DTYPES",
    "LAYER_BUDGETS",
    "CODE_LENGTHS",
    "ADAPTIVE_BELOW",
    "MAX_ATOMS",
]

CACHE_KINDS = ("lexico", "full")
COEF_DTYPES = ("float8_e4m3fn", "float16", "float32")  # coefficient storage
SELECT_DTYPES = ("auto", "bfloat16", "float16", "float32")  # OMP's atom-selection GEMM ("auto": per device)
BUFFER_DTYPES = ("auto", "float16", "bfloat16", "float32")  # full-precision buffer ("auto": see buffer_dtype)
MAX_ATOMS = 32767  # indices are stored as int16
LAYER_BUDGETS = ("auto", "uniform", "profile")  # profile where the dictionary has one, else uniform; or either
CODE_LENGTHS = ("auto", "adaptive", "fixed")  # atoms varying per vector within a window (lexico_chat.adaptive), or not
ADAPTIVE_BELOW = 8  # "auto" codes adapt below this many atoms per vector (where they were measured to win)
KEY_SPACES = ("post_rope", "pre_rope")  # where dictionaries code keys: after RoPE (the paper) or before it
DEFAULT_KEY_SPACE = "pre_rope"  # a third less error at the same sparsity (DESIGN.md); trainer and CLI read it


@dataclass(frozen=True)
class CacheConfig:
    """KV-cache settings of a session, an eval or a benchmark.

    Attributes
    ----------
    kind : "lexico" (sparse-coded) or "full" (transformers' DynamicCache, for comparison).
    sparsity : atoms per vector s (1 <= s <= min(head_dim, atoms), checked by ``validate``).
    key_sparsity, value_sparsity : atoms per key / per value vector when they differ from ``sparsity``
        (None: ``sparsity``); read them as ``sparsity_k`` / ``sparsity_v``.
    atoms : dictionary size N (2..32767).
    buffer : recent tokens every query sees in full precision (>= 0).
    window : tokens compressed at a time (>= 1).
    coef_dtype : coefficient storage, one of ``COEF_DTYPES`` (fp8 e4m3 by default: 1 byte).
    select_dtype : dtype of OMP's atom-selection GEMM, one of ``SELECT_DTYPES``; "auto" (default) is bf16 on
        CUDA and where a CPU has fast bf16 GEMMs, else fp32 (``lexico_chat.omp.fastest_select_dtype``).
    buffer_dtype : storage of the full-precision buffer, one of ``BUFFER_DTYPES``; "auto" keeps a 16-bit
        model dtype and holds an fp32 model's buffer (CPU) in fp16; "float32" with fp32 coefficients and
        s = head_dim over an identity dictionary is lossless.
    layer_budget : one of ``LAYER_BUDGETS``; "profile" spends the bytes of ``sparsity`` atoms per vector unevenly
        over the layers, by the dictionary's measured sensitivity profile (``lexico_chat.budget``; an error for a
        dictionary without one); "uniform" gives every layer ``sparsity``; "auto" (default) is "profile" where the
        dictionary records a profile and keys and values share one sparsity, else "uniform" (``profiled``). The
        profile lowers perplexity at every s and found every needle of ``eval niah --quick`` that uniform finds.
    code_length : one of ``CODE_LENGTHS``; "adaptive": each window's vectors share the bytes of ``window`` codes of
        their layer's s atoms, vectors that code badly taking more (``lexico_chat.adaptive``; where the window is
        even and s < 16); "fixed": s atoms each; "auto" (default): adaptive below ``ADAPTIVE_BELOW`` atoms per
        vector (``adaptive_codes``). On 4,096 held-out tokens adaptive codes lowered the excess perplexity over the
        full cache from 3.8% to 1.9% at s = 4 and from 1.6% to 0.7% at s = 6, at the same bytes; at s = 8 it was
        0.08% against 0.18% (within noise), and OMP runs to twice the atoms, so s = 8 keeps fixed codes.
    """

    kind: str = "lexico"
    sparsity: int = 8
    atoms: int = 4096
    buffer: int = 128
    window: int = 32
    coef_dtype: str = "float8_e4m3fn"
    select_dtype: str = "auto"
    buffer_dtype: str = "auto"
    key_sparsity: int | None = None
    value_sparsity: int | None = None
    layer_budget: str = "auto"
    code_length: str = "auto"

    def __post_init__(self) -> None:
        _one_of("kind", self.kind, CACHE_KINDS)
        for name in _SPARSITIES:
            if name == "sparsity" or getattr(self, name) is not None:
                _int_in(name, getattr(self, name), 1, None)
        _int_in("atoms", self.atoms, 2, MAX_ATOMS)
        _int_in("buffer", self.buffer, 0, None)
        _int_in("window", self.window, 1, None)
        _one_of("coef_dtype", self.coef_dtype, COEF_DTYPES)
        _one_of("select_dtype", self.select_dtype, SELECT_DTYPES)
        _one_of("buffer_dtype", self.buffer_dtype, BUFFER_DTYPES)
        _one_of("layer_budget", self.layer_budget, LAYER_BUDGETS)
        _one_of("code_length", self.code_length, CODE_LENGTHS)
        if self.layer_budget == "profile" and (self.key_sparsity is not None or self.value_sparsity is not None):
            raise LexicoError(
                "--layer-budget profile gives keys and values of a layer the same sparsity: "
                "drop --key-sparsity / --value-sparsity"
            )

    @property
    def lexico(self) -> bool:
        return self.kind == "lexico"

    @property
    def sparsity_k(self) -> int:
        """Atoms per key vector."""
        return self.sparsity if self.key_sparsity is None else self.key_sparsity

    @property
    def sparsity_v(self) -> int:
        """Atoms per value vector."""
        return self.sparsity if self.value_sparsity is None else self.value_sparsity

    @property
    def adaptive_codes(self) -> bool:
        """Whether codes vary in length per vector: "adaptive", or "auto" below ``ADAPTIVE_BELOW`` atoms."""
        small = max(self.sparsity_k, self.sparsity_v) < ADAPTIVE_BELOW
        return self.code_length == "adaptive" or (self.code_length == "auto" and small)

    def sparsity_label(self, meta=None) -> str:
        """``8``, ``k6/v10`` when keys and values differ, ``8 per layer`` where the layers get their own sparsity
        (over a dictionary with this ``DictionaryMeta``; without one, only for "profile"), then `` adaptive``
        where codes vary in length (shown as ``s=…``)."""
        k, v = self.sparsity_k, self.sparsity_v
        label = str(k) if k == v else f"k{k}/v{v}"
        per_layer = self.layer_budget == "profile" if meta is None else self.profiled(meta)
        label = label + " per layer" if per_layer else label
        return label + " adaptive" if self.lexico and self.adaptive_codes else label

    def profiled(self, meta) -> bool:
        """Whether the layers of a cache over a dictionary with this ``DictionaryMeta`` get their own sparsity:
        "profile" over a dictionary with a sensitivity profile, or "auto" there with one sparsity for keys and
        values."""
        if self.layer_budget == "uniform" or meta.layer_sensitivity is None:
            return False
        return self.layer_budget == "profile" or (self.key_sparsity is None and self.value_sparsity is None)

    def resolved(self, meta) -> CacheConfig:
        """The same settings with "auto" made concrete for a dictionary with this ``DictionaryMeta``."""
        if self.layer_budget != "auto":
            return self
        return self.replace(layer_budget="profile" if self.profiled(meta) else "uniform")

    def validate(self, dims=None, dictionary=None) -> CacheConfig:
        """Check the settings against a model and a dictionary; returns ``self``.

        Parameters
        ----------
        dims : ``lexico_chat.models.ModelDims`` of the model (or None).
        dictionary : the ``LexicoDictionary`` to be used (or None).
        """
        if dictionary is not None:
            meta = dictionary.meta
            if dims is not None and (meta.num_layers, meta.head_dim) != (dims.num_layers, dims.head_dim):
                raise LexicoError(
                    f"dictionary is for {meta.num_layers} layers x head_dim {meta.head_dim}, "
                    f"the model has {dims.num_layers} layers x head_dim {dims.head_dim}"
                )
            high = min(meta.head_dim, meta.atoms)
        elif dims is not None:
            high = dims.head_dim
        else:
            return self
        for name in _SPARSITIES:
            if name == "sparsity" or getattr(self, name) is not None:
                _int_in(name, getattr(self, name), 1, high)
        if self.layer_budget == "profile" and dictionary is not None and dictionary.meta.layer_sensitivity is None:
            raise LexicoError(
                "--layer-budget profile needs a dictionary with a measured layer sensitivity profile "
                "(python benchmarks/layer_sensitivity.py DICTIONARY --write); this one has none"
            )
        return self

    def replace(self, **changes) -> CacheConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict:
        """The settings as a JSON-able dict (saved sessions, eval output)."""
        return dataclasses.asdict(self)


_SPARSITIES = ("sparsity", "key_sparsity", "value_sparsity")


def _flag(name: str) -> str:
    """A setting as its command-line flag ("coef_dtype" -> "--coef-dtype"; "kind" is --cache)."""
    return "--cache" if name == "kind" else "--" + name.replace("_", "-")


def _one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise LexicoError(f"{_flag(name)} must be one of {list(allowed)}, got {value!r}")


def _int_in(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LexicoError(f"{_flag(name)} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise LexicoError(f"{_flag(name)} must be {allowed}, got {value}")
