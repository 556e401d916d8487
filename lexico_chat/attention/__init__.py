"""Attention over a Lexico cache: sparse-coded keys/values plus a full-precision buffer.

* ``codes``: ``CompressedKV`` (what attention reads of a layer), ``coefs_to_float``, 12-bit index packing,
  ``LAYER_TAG``.
* ``reference``: the PyTorch path (the reference and the CPU fallback; three pieces run in ``lexico_chat.native``
  on the CPU), ``attention_bias``.
* ``triton_decode`` / ``triton_parts``: the fused Triton decode kernels (optional, CUDA).
* ``dispatch``: ``compressed_attention``, which picks between the two with one predicate.
* ``registration``: the "lexico" implementation in transformers' ``AttentionInterface``.

Importing this package imports torch only; the names of ``registration`` (which imports transformers'
attention and mask modules, and with them torch's compiler stack) load on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lexico_chat.attention.codes import (
    LAYER_TAG,
    PACKED_MAX_ATOMS,
    CompressedKV,
    coefs_to_float,
    pack_indices,
    unpack_indices,
)
from lexico_chat.attention.dispatch import compressed_attention
from lexico_chat.attention.reference import attention_bias

if TYPE_CHECKING:
    from lexico_chat.attention.registration import (
        ATTENTION_NAME,
        LostLayerTagError,
        lexico_attention_forward,
        register_lexico_attention,
        use_lexico_attention,
    )

__all__ = [
    "ATTENTION_NAME",
    "LAYER_TAG",
    "PACKED_MAX_ATOMS",
    "CompressedKV",
    "LostLayerTagError",
    "attention_bias",
    "coefs_to_float",
    "compressed_attention",
    "lexico_attention_forward",
    "pack_indices",
    "unpack_indices",
    "register_lexico_attention",
    "use_lexico_attention",
]

_REGISTRATION = {
    "ATTENTION_NAME",
    "LostLayerTagError",
    "lexico_attention_forward",
    "pack_indices",
    "unpack_indices",
    "register_lexico_attention",
    "use_lexico_attention",
}


def __getattr__(name: str):
    """The ``registration`` names, imported on first access (PEP 562)."""
    if name in _REGISTRATION:
        from lexico_chat.attention import registration

        value = globals()[name] = getattr(registration, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
