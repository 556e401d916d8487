"""``LexicoLayer``: one attention layer's KV cache as sparse codes plus a full-precision buffer.

The schedule (the cache invariant of DESIGN.md): the query at position p sees the whole windows of
``window`` tokens that lie more than ``buffer`` tokens behind it as sparse codes, and every later token
(at least ``buffer`` before it, and itself) in full precision — in any forward call, so chunked prefill
gives what token-by-token feeding gives, whatever the chunk size.

``update(k, v)`` appends the call's (post-RoPE) states to the buffer and codes, by one batched OMP call
for keys and one for values over every batch row, head and token at once, the tokens that the call's
last query must see compressed. Those that the call's earlier queries still need exact stay in the
buffer too (the overlap); the attention masks each copy per query (``lexico_chat.attention.overlap``)
and calls ``settle()`` afterwards, which drops the overlap, so between calls every token is held once.
With a pre-RoPE key dictionary (``rope`` given) keys are un-rotated by their own rotation before OMP
(``lexico_chat.rope``). Where codes adapt (``CacheConfig.adaptive_codes``; ``lexico_chat.adaptive``) each window of a
KV head shares a fixed number of atoms, held as runs in an ``AdaptiveCodeStore``, and attention reads them padded
to the longest code. The returned keys and values are tagged with the layer (``LAYER_TAG``) so that
the registered "lexico" attention finds the codes of exactly this layer.
"""

from __future__ import annotations

import torch

from lexico_chat.adaptive import adaptive_codes, longest_code, window_atoms
from lexico_chat.attention import LAYER_TAG, CompressedKV
from lexico_chat.attention.codes import index_bits_for
from lexico_chat.cache.layer_base import CompactLayer
from lexico_chat.cache.store import AdaptiveCodeStore, CodeStore, TokenBuffer
from lexico_chat.config import CacheConfig
from lexico_chat.memory import LayerMemory, fp16_bytes, tensor_bytes
from lexico_chat.omp import omp, select_dtype_for
from lexico_chat.rope import RopeProbe, RopeTable, pair_order, unrotate

__all__ = ["LexicoLayer", "LAYER_TAG", "torch_dtype"]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a ``CacheConfig`` dtype name stands for ("float8_e4m3fn" -> torch.float8_e4m3fn)."""
    return getattr(torch, name)


class LexicoLayer(CompactLayer):
    """Compressed KV cache of one full-attention layer.

    Parameters
    ----------
    key_dictionary, value_dictionary : (head_dim, N) unit-norm atoms of this layer (any device/dtype;
        cast once to the layer's device in fp32 on first use).
    config : the cache settings (sparsity, buffer, window, storage dtypes); checked against the
        dictionary here.
    rope : (table, probe) for a pre-RoPE key dictionary: the cache's shared ``RopeTable`` and the model's
        ``RopeProbe``; None (default) when the key atoms code post-RoPE keys.
    """

    def __init__(
        self,
        key_dictionary: torch.Tensor,
        value_dictionary: torch.Tensor,
        config: CacheConfig,
        *,
        rope: tuple[RopeTable, RopeProbe] | None = None,
        sparsities: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        head_dim, atoms = key_dictionary.shape
        if tuple(value_dictionary.shape) != (head_dim, atoms):
            raise ValueError(f"value dictionary must be {(head_dim, atoms)}, got {tuple(value_dictionary.shape)}")
        key_s, value_s = sparsities if sparsities is not None else (config.sparsity_k, config.sparsity_v)
        for name, s in (("sparsity", key_s), ("sparsity", value_s)):
            if not 1 <= s <= min(head_dim, atoms):
                raise ValueError(f"`{name}` must be in [1, {min(head_dim, atoms)}], got {s}")
        self.config = config
        self.key_sparsity, self.value_sparsity = key_s, value_s
        self.buffer, self.window = config.buffer, config.window
        self.coef_dtype = torch_dtype(config.coef_dtype)
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
        self.select_dtype = select_dtype_for(self.config.select_dtype, self.device)
        # (head_dim, N) view of a contiguous (N, head_dim) tensor where attention reads atoms as rows
        # (values, and pre-RoPE keys, which it rebuilds); post-RoPE key atoms feed one GEMM as (m, N).
        # Pre-RoPE key atoms are held in rotation-pair order (rope.pair_order): attention rotates the keys it
        # rebuilds by one complex multiply, and un-rotated keys are put in the same order before OMP
        keys = self._source[0].to(self.device, torch.float32)
        self._pairs = pair_order(m, self.device) if self.rope_table is not None else None
        self.key_dictionary = keys.contiguous() if self._pairs is None else keys[self._pairs].t().contiguous().t()
        self.value_dictionary = self._source[1].to(self.device, torch.float32).t().contiguous().t()
        self.key_codes = self._code_store(b, h, self.key_sparsity)
        self.value_codes = self._code_store(b, h, self.value_sparsity)
        held = self.buffer_dtype_for(key_states.dtype)
        self.key_buffer = TokenBuffer(b, h, m, held, self.device)
        self.value_buffer = TokenBuffer(b, h, m, held, self.device)
        self.buffer_start = 0  # position of the first buffered token
        self.query_start = 0  # position of the current call's first token
        self.is_initialized = True

    def _code_store(self, b: int, h: int, sparsity: int) -> CodeStore | AdaptiveCodeStore:
        """An empty store of codes of ``sparsity`` atoms (on average, where codes adapt: ``adapts``)."""
        bits = index_bits_for(self._source[0].shape[1])  # N <= 4096: 2.5 bytes per atom, not 3
        if not self.adapts(sparsity):
            return CodeStore(b, h, sparsity, self.coef_dtype, self.device, bits)
        longest, atoms = self._longest(sparsity), self.window_atoms(sparsity)
        return AdaptiveCodeStore(b, h, longest, self.window, atoms, self.coef_dtype, self.device, bits)

    def _longest(self, sparsity: int) -> int:
        return longest_code(sparsity, *self._source[0].shape)

    def window_atoms(self, sparsity: int) -> int:
        """Atoms of a window of adaptive codes spending the bytes of ``sparsity`` atoms per vector."""
        bits = index_bits_for(self._source[0].shape[1])
        return window_atoms(sparsity, self.window, self._longest(sparsity), bits, self.coef_dtype.itemsize)

    def adapts(self, sparsity: int) -> bool:
        """Whether codes of ``sparsity`` atoms vary in length per vector here: ``config.adaptive_codes``, the window
        even, and a vector may take more atoms (``adaptive.longest_code``)."""
        return self.config.adaptive_codes and self.window % 2 == 0 and self._longest(sparsity) > sparsity

    def buffer_dtype_for(self, model_dtype: torch.dtype) -> torch.dtype:
        """Storage dtype of the full-precision buffer for a model computing in ``model_dtype``: "auto" keeps a
        16-bit model dtype and holds an fp32 model's buffer in fp16 (the CPU case), so the buffer never
        costs more than the fp16 cache it is compared with; "float32" is the lossless choice."""
        if self.config.buffer_dtype != "auto":
            return torch_dtype(self.config.buffer_dtype)
        return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.float16

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (batch, kv_heads, t, head_dim) states; return the buffer's keys (tagged) and values.

        Compression is deferred so that the call sees exactly what token-by-token feeding would: the
        query at position p sees tokens before ``compressed_limit(p)`` compressed and the rest exact.
        Tokens that some query of this call still needs exact but a later query needs compressed are
        coded now and kept in the buffer too (the overlap); attention masks each copy per query, and
        ``settle()`` drops the overlap once the call's attention has run.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.settle()
        start, t = self.get_seq_length(), key_states.shape[2]
        if self.rope_table is not None:
            self.rope_table.ensure(start, t, self.rope_probe, key_states.shape[0])
        self.key_buffer.append(key_states)
        self.value_buffer.append(value_states)
        self.query_start = start
        done, needed = self.compressed_length, self.compressed_limit(start + t - 1)
        if needed > done:
            self._compress(needed - done)
        self._drop(self.compressed_limit(start) - self.buffer_start)  # no query of this call needs those exact
        keys, values = self.key_buffer.view(), self.value_buffer.view()
        if keys.dtype != key_states.dtype:  # a 16-bit buffer under an fp32 model: attention computes in fp32
            keys, values = keys.to(key_states.dtype), values.to(value_states.dtype)
        setattr(keys, LAYER_TAG, self)
        return keys, values

    def compressed_limit(self, position: int) -> int:
        """Tokens the query at ``position`` sees compressed: the whole windows more than ``buffer`` tokens
        behind it (so it sees at least ``buffer`` earlier tokens, and itself, in full precision)."""
        return max(0, position - self.buffer) // self.window * self.window

    def settle(self) -> None:
        """Drop buffered tokens that are also compressed (the overlap of the last call); idempotent."""
        if self.is_initialized:
            self._drop(self.compressed_length - self.buffer_start)

    def _drop(self, count: int) -> None:
        if count > 0:
            self.key_buffer.drop_front(count)
            self.value_buffer.drop_front(count)
            self.buffer_start += count

    def _compress(self, count: int) -> None:
        """Code the ``count`` oldest tokens not yet compressed (they stay in the buffer until dropped)."""
        done = self.compressed_length
        offset = done - self.buffer_start  # first buffered token not yet coded
        for states, store, dictionary in (
            (self.key_buffer, self.key_codes, self.key_dictionary),
            (self.value_buffer, self.value_codes, self.value_dictionary),
        ):
            front = states.view()[:, :, offset : offset + count]  # (b, h, count, m)
            b, h, _, m = front.shape
            if states is self.key_buffer and self.rope_table is not None:
                self.rope_table.extend(done + count)  # the rotation of tokens about to be coded
                cos, sin = (
                    x.float().unsqueeze(1) for x in self.rope_table.view(done, done + count)
                )  # (b, 1, count, m/2)
                front = unrotate(front.float(), cos, sin)[..., self._pairs]  # the order of the held atoms
            s, vectors = store.sparsity, front.reshape(b * h * count, m)
            if isinstance(store, AdaptiveCodeStore):
                idx, coef, counts = adaptive_codes(
                    vectors, dictionary, s, store.window, store.window_atoms, select_dtype=self.select_dtype
                )
                store.append(idx.view(b, h, count, s), coef.view(b, h, count, s), counts.view(b, h, count))
            else:
                idx, coef = omp(vectors, dictionary, s, select_dtype=self.select_dtype)
                store.append(idx.view(b, h, count, s), coef.view(b, h, count, s))

    @property
    def compressed_length(self) -> int:
        return self.key_codes.length if self.is_initialized else 0

    @property
    def buffer_length(self) -> int:
        return self.key_buffer.length if self.is_initialized else 0

    def query_limits(self, q_len: int) -> torch.Tensor | None:
        """(q_len,) int64 ``compressed_limit`` of the current call's queries when some tokens are held both
        compressed and exact (a chunk that crosses a window boundary), else None (every query sees the
        codes and the buffer whole)."""
        if self.compressed_length <= self.buffer_start:
            return None
        positions = torch.arange(self.query_start, self.query_start + q_len)
        return (positions - self.buffer).clamp_min(0) // self.window * self.window

    def compressed(self) -> CompressedKV:
        """The compressed tokens (views of the stores, no copy) with this layer's fp32 dictionaries."""
        bits = {self.key_codes.read_bits, self.value_codes.read_bits}
        if len(bits) == 1:
            (key_idx, key_coef), (value_idx, value_coef) = self.key_codes.stored(), self.value_codes.stored()
        else:  # one store packed, the other not: both as int16, the one index format CompressedKV carries
            (key_idx, key_coef), (value_idx, value_coef) = self.key_codes.view(), self.value_codes.view()
        rope = None if self.rope_table is None else self.rope_table.view(0, self.compressed_length)
        return CompressedKV(
            key_idx, key_coef, value_idx, value_coef, self.key_dictionary, self.value_dictionary, key_rope=rope,
            index_bits=min(bits) if len(bits) == 1 else 16, key_pairs=self.rope_table is not None,
        )  # fmt: skip

    def get_seq_length(self) -> int:
        return self.buffer_start + self.buffer_length if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The mask spans every token, compressed ones first: (seen + query_length, offset 0)."""
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        """Drop every token (the dictionaries stay cast)."""
        if self.is_initialized:
            for part in (self.key_codes, self.value_codes, self.key_buffer, self.value_buffer):
                part.length = 0
            self.buffer_start = self.query_start = 0

    @property
    def batch_size(self) -> int:
        return self.key_buffer.data.shape[0]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and reorder) batch rows ``indices``."""
        if self.is_initialized:
            for part in (self.key_codes, self.value_codes, self.key_buffer, self.value_buffer):
                part.select_batch(indices)

    def memory(self, index: int) -> LayerMemory:
        """Exact bytes held, from the tensors: filled/allocated codes, buffer, dictionaries."""
        if not self.is_initialized:
            return LayerMemory(index, "empty")
        b, h, _, m = self.key_buffer.data.shape
        codes, buffers = (self.key_codes, self.value_codes), (self.key_buffer, self.value_buffer)
        return LayerMemory(
            index,
            "lexico",
            compressed_tokens=self.compressed_length,
            buffer_tokens=self.buffer_length,
            seen_tokens=self.get_seq_length(),
            compressed_bytes=sum(part.nbytes() for part in codes),
            buffer_bytes=sum(part.nbytes() for part in buffers),
            allocated_bytes=sum(part.nbytes(False) for part in codes + buffers),
            fp16_bytes=fp16_bytes(self.get_seq_length(), b, h, m),
            dictionary_bytes=tensor_bytes(self.key_dictionary, self.value_dictionary),
        )
