"""12-bit packed atom indices: the byte layout against a bit-stream reference, the store, the byte count."""

import pytest
import torch

from lexico_chat.attention import pack_indices, unpack_indices
from lexico_chat.cache import LexicoCache
from lexico_chat.cache.store import CodeStore
from lexico_chat.config import CacheConfig
from tests.conftest import random_dictionary


def _bit_stream(row: list[int]) -> bytes:
    """Reference: each index as 12 bits, least significant first, in one little-endian bit stream
    (an odd count padded with a zero index)."""
    row = row + [0] * (len(row) % 2)
    value = sum(index << (12 * i) for i, index in enumerate(row))
    return value.to_bytes(len(row) * 3 // 2, "little")


@pytest.mark.parametrize("s", [1, 2, 5, 8, 16])
def test_layout_is_a_12_bit_stream_and_round_trips(s):
    gen = torch.Generator().manual_seed(s)
    indices = torch.randint(0, 4096, (3, 2, 7, s), generator=gen, dtype=torch.int16)
    indices[0, 0, 0] = 4095  # all bits set
    indices[0, 0, 1] = 0
    packed = pack_indices(indices)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 2, 7, 3 * ((s + 1) // 2))
    for row, stored in zip(indices.reshape(-1, s).tolist(), packed.reshape(-1, packed.shape[-1]).tolist()):
        assert bytes(stored) == _bit_stream(row)
    assert torch.equal(unpack_indices(packed, s), indices.int())
    assert torch.equal(unpack_indices(packed[:, :, 2:5], s), indices[:, :, 2:5].int())  # strided views


def test_every_index_value_survives():
    every = torch.arange(4096, dtype=torch.int16).view(1, 1, 512, 8)
    assert torch.equal(unpack_indices(pack_indices(every), 8), every.int())


def test_store_holds_packed_bytes_and_reads_back_int16():
    store = CodeStore(2, 3, 5, torch.float8_e4m3fn, torch.device("cpu"), index_bits=12)
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randint(0, 4096, (2, 3, t, 5), generator=gen) for t in (40, 70)]  # grows past 64
    for chunk in chunks:
        store.append(chunk, torch.randn(2, 3, chunk.shape[2], 5, generator=gen))
    indices, coefs = store.view()
    assert indices.dtype == torch.int16 and torch.equal(indices, torch.cat(chunks, 2).to(torch.int16))
    assert store.stored()[0].dtype == torch.uint8 and store.stored()[0].shape == (2, 3, 110, 9)
    assert store.nbytes() == 110 * 2 * 3 * (9 + 5) == sum(t.numel() * t.element_size() for t in store.stored())


@pytest.mark.parametrize("atoms,index_bytes", [(4096, 1.5), (4097, 2)])
def test_cache_counts_two_and_a_half_bytes_per_atom_up_to_4096_atoms(tiny_model, atoms, index_bytes):
    model = tiny_model("llama")
    text = model.config.get_text_config()
    dictionary = random_dictionary(model, atoms)
    config = CacheConfig(sparsity=4, atoms=atoms, buffer=8, window=4, code_length="fixed")
    cache = LexicoCache.from_model(model, dictionary, config)
    with torch.inference_mode():
        model(torch.arange(40).view(1, 40) % text.vocab_size, past_key_values=cache, use_cache=True)
    memory = cache.memory()
    heads = text.num_key_value_heads
    assert len(memory.layers) == text.num_hidden_layers  # every layer is compressed in the tiny llama
    coded = (39 - 8) // 4 * 4  # whole windows more than 8 tokens behind the last query (position 39)
    assert memory.compressed_tokens == coded
    expected = text.num_hidden_layers * 2 * coded * heads * 4 * (index_bytes + 1)  # K and V: s indices + s fp8 coefs
    assert memory.compressed_bytes == expected
