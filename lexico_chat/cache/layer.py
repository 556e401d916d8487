"""``LexicoLayer``: one attention layer's KV cache as sparse codes plus a full-precision buffer.

``update(k, v)`` appends the new (post-RoPE) states to the buffer; once the buffer holds more than
``buffer`` tokens its oldest whole windows of ``window`` tokens (or all of it, if that is fewer) are
sparse-coded by one batched OMP call for keys and one for values, over every batch row, head and
token at once, and moved to the compressed store. With a pre-RoPE key dictionary (``rope`` given) keys
are un-rotated by their own rotation before OMP (``lexico_chat.rope``). It returns the buffer's keys and values, tagged
with the layer itself (attribute ``LAYER_TAG`` on the returned key tensor) so that the registered
"lexico" attention finds the compressed store of exactly this layer (see ``attention.py``).
"""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import CacheLayerMixin

from lexico_chat.cache.kernels import CompressedKV
from lexico_chat.cache.store import CodeStore, TokenBuffer
from lexico_chat.omp import omp
from lexico_chat.rope import RopeProbe, RopeTable, unrotate

__all__ = ["LexicoLayer", "LAYER_TAG", "COEF_DTYPES"]

LAYER_TAG = "_lexico_layer"
COEF_DTYPES = (torch.float8_e4m3fn, torch.float16, torch.float32)


class LexicoLayer(CacheLayerMixin):
    """Compressed KV cache of one full-attention layer.

    Parameters
    ----------
    key_dictionary, value_dictionary : (head_dim, N) unit-norm atoms of this layer (any device/dtype;
        cast once to the layer's device in fp32 on first use).
    sparsity : atoms per vector, 1 <= s <= min(head_dim, N).
    buffer : recent tokens kept in full precision (>= 0).
    window : tokens compressed at a time (>= 1).
    coef_dtype : storage dtype of coefficients, one of ``COEF_DTYPES``.
    select_dtype : dtype OMP uses to choose atoms (see ``lexico_chat.omp.omp``).
    rope : (table, probe) for a pre-RoPE key dictionary: the cache's shared ``RopeTable`` and the model's
        ``RopeProbe``; None (default) when the key atoms code post-RoPE keys.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        key_dictionary: torch.Tensor,
        value_dictionary: torch.Tensor,
        sparsity: int,
        *,
        buffer: int = 128,
        window: int = 32,
        coef_dtype: torch.dtype = torch.float8_e4m3fn,
        select_dtype: torch.dtype = torch.bfloat16,
        rope: tuple[RopeTable, RopeProbe] | None = None,
    ) -> None:
        super().__init__()
        head_dim, atoms = key_dictionary.shape
        if tuple(value_dictionary.shape) != (head_dim, atoms):
            raise ValueError(f"value dictionary must be {(head_dim, atoms)}, got {tuple(value_dictionary.shape)}")
        if not 1 <= sparsity <= min(head_dim, atoms):
            raise ValueError(f"`sparsity` must be in [1, {min(head_dim, atoms)}], got {sparsity}")
        if buffer < 0 or window < 1:
            raise ValueError(f"`buffer` must be >= 0 and `window` >= 1, got buffer={buffer}, window={window}")
        if coef_dtype not in COEF_DTYPES:
            raise ValueError(f"`coef_dtype` must be one of {list(COEF_DTYPES)}, got {coef_dtype}")
        self.sparsity, self.buffer, self.window = sparsity, buffer, window
        self.coef_dtype, self.select_dtype = coef_dtype, select_dtype
        self._source = (key_dictionary, value_dictionary)
        self.rope_table, self.rope_probe = rope if rope is not None else (None, None)
        self.key_dictionary: torch.Tensor | None = None
        self.value_dictionary: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate empty stores for (batch, kv_heads, *, head_dim) states and cast the dictionaries once."""
        b, h, _, m = key_states.shape
        if m != self._source[0].shape[0]:
            raise ValueError(f"dictionary head_dim {self._source[0].shape[0]} does not match the model's {m}")
        self.dtype, self.device = key_states.dtype, key_states.device
        # (head_dim, N) view of a contiguous (N, head_dim) tensor where attention reads atoms as rows
        # (values, and pre-RoPE keys, which it rebuilds); post-RoPE key atoms feed one GEMM as (m, N)
        keys = self._source[0].to(self.device, torch.float32)
        self.key_dictionary = keys.t().contiguous().t() if self.rope_table is not None else keys.contiguous()
        self.value_dictionary = self._source[1].to(self.device, torch.float32).t().contiguous().t()
        self.key_codes = CodeStore(b, h, self.sparsity, self.coef_dtype, self.device)
        self.value_codes = CodeStore(b, h, self.sparsity, self.coef_dtype, self.device)
        self.key_buffer = TokenBuffer(b, h, m, self.dtype, self.device)
        self.value_buffer = TokenBuffer(b, h, m, value_states.dtype, self.device)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (batch, kv_heads, t, head_dim) states; return the buffer's keys (tagged) and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.rope_table is not None:
            self.rope_table.ensure(self.get_seq_length(), key_states.shape[2], self.rope_probe, key_states.shape[0])
        self.key_buffer.append(key_states)
        self.value_buffer.append(value_states)
        count = self._due()
        if count:
            self._compress(count)
        keys, values = self.key_buffer.view(), self.value_buffer.view()
        setattr(keys, LAYER_TAG, self)
        return keys, values

    def _due(self) -> int:
        """Tokens to compress now: whole windows covering the excess over ``buffer``, at most the buffer."""
        held = self.key_buffer.length
        excess = held - self.buffer
        if excess <= 0:
            return 0
        return min(held, math.ceil(excess / self.window) * self.window)

    def _compress(self, count: int) -> None:
        for states, store, dictionary in (
            (self.key_buffer, self.key_codes, self.key_dictionary),
            (self.value_buffer, self.value_codes, self.value_dictionary),
        ):
            front = states.front(count)  # (b, h, count, m)
            b, h, _, m = front.shape
            if states is self.key_buffer and self.rope_table is not None:
                start = self.compressed_length
                cos, sin = self.rope_table.view(start, start + count)  # (b, count, m/2)
                front = unrotate(front.float(), cos.unsqueeze(1), sin.unsqueeze(1))
            idx, coef = omp(front.reshape(b * h * count, m), dictionary, self.sparsity, select_dtype=self.select_dtype)
            store.append(idx.view(b, h, count, self.sparsity), coef.view(b, h, count, self.sparsity))
            states.drop_front(count)

    @property
    def compressed_length(self) -> int:
        return self.key_codes.length if self.is_initialized else 0

    @property
    def buffer_length(self) -> int:
        return self.key_buffer.length if self.is_initialized else 0

    def compressed(self) -> CompressedKV:
        """The compressed tokens (views of the stores, no copy) with this layer's fp32 dictionaries."""
        key_idx, key_coef = self.key_codes.view()
        value_idx, value_coef = self.value_codes.view()
        rope = None if self.rope_table is None else self.rope_table.view(0, self.compressed_length)
        return CompressedKV(
            key_idx, key_coef, value_idx, value_coef, self.key_dictionary, self.value_dictionary, key_rope=rope
        )

    def get_seq_length(self) -> int:
        return self.compressed_length + self.buffer_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The mask spans every token, compressed ones first: (seen + query_length, offset 0)."""
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        """Drop every token (the dictionaries stay cast)."""
        if self.is_initialized:
            for part in (self.key_codes, self.value_codes, self.key_buffer, self.value_buffer):
                part.length = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("LexicoLayer cannot be cropped: compressed tokens cannot be rolled back")

    def offload(self) -> None:  # the stores are already small; nothing to move
        return None

    def prefetch(self) -> None:
        return None

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and reorder) batch rows ``indices``."""
        if self.is_initialized:
            for part in (self.key_codes, self.value_codes, self.key_buffer, self.value_buffer):
                part.select_batch(indices)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            batch = self.key_buffer.data.shape[0]
            self.batch_select_indices(torch.arange(batch, device=self.device).repeat_interleave(repeats))

    def memory_parts(self) -> dict[str, int]:
        """Exact bytes held, from the tensors: filled/allocated codes, buffer, dictionaries."""
        if not self.is_initialized:
            return {"compressed": 0, "allocated": 0, "buffer": 0, "buffer_allocated": 0, "dictionary": 0}
        dictionaries = (self.key_dictionary, self.value_dictionary)
        return {
            "compressed": self.key_codes.nbytes() + self.value_codes.nbytes(),
            "allocated": self.key_codes.nbytes(False) + self.value_codes.nbytes(False),
            "buffer": self.key_buffer.nbytes() + self.value_buffer.nbytes(),
            "buffer_allocated": self.key_buffer.nbytes(False) + self.value_buffer.nbytes(False),
            "dictionary": sum(d.numel() * d.element_size() for d in dictionaries),
        }
