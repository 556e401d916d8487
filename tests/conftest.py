"""Shared fixtures: tiny random decoders (Llama, Qwen2, Mistral, Gemma 3) built once per session from
transformers config classes, the real default model (slow tests), and dictionary helpers."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from lexico_chat.dictionary import DictionaryMeta, LexicoDictionary
from lexico_chat.models import model_dims

# Tests never touch the real caches: lexico-chat's user cache (converted models, trained dictionaries) and the
# Hugging Face cache are session folders, set before any test module imports transformers (subprocesses
# inherit them); the hub is offline. The default model converted by the first test that loads it is reused.
_CACHES = Path(tempfile.mkdtemp(prefix="lexico-test-caches-"))
atexit.register(shutil.rmtree, _CACHES, True)  # also after --collect-only, which runs no session fixture
for _name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
    os.environ.pop(_name, None)
os.environ.update(LEXICO_CHAT_HOME=str(_CACHES / "lexico-chat"), HF_HOME=str(_CACHES / "hf"), HF_HUB_OFFLINE="1")


TINY_ARCHS = ("llama", "qwen2", "mistral", "gemma3")
_COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
    initializer_range=0.1,
)


def tiny_config(arch: str):
    """A small config of ``arch`` (4 layers, 4 heads, head_dim 16); Gemma 3 alternates sliding (window 8)
    and full-attention layers."""
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**_COMMON)
    if arch == "qwen2":
        return tf.Qwen2Config(**_COMMON, use_sliding_window=False)
    if arch == "mistral":
        return tf.MistralConfig(**_COMMON, sliding_window=None)
    if arch == "gemma3":
        layer_types = ["sliding_attention", "full_attention"] * 2
        return tf.Gemma3TextConfig(
            **{**_COMMON, "num_key_value_heads": 1},
            sliding_window=8,
            layer_types=layer_types,
            query_pre_attn_scalar=16,
        )
    raise ValueError(f"unknown tiny arch {arch!r}; choose one of {TINY_ARCHS}")


def build_tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="sdpa")
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(arch)`` → a session-wide tiny random model of that architecture (built once)."""
    built: dict[str, torch.nn.Module] = {}

    def get(arch: str = "llama") -> torch.nn.Module:
        if arch not in built:
            built[arch] = build_tiny_model(arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct), loaded once; for ``@pytest.mark.slow`` tests."""
    from lexico_chat.errors import LexicoError
    from lexico_chat.models import load_model

    try:
        return load_model(device="cpu")  # the slow tests expect fp32 on the CPU, GPU or not
    except LexicoError as err:
        pytest.skip(f"default model unavailable: {err}")


def identity_dictionary(model: torch.nn.Module, key_space: str = "post_rope") -> LexicoDictionary:
    """The lossless dictionary (standard basis) for ``model``: with sparsity = head_dim codes are exact."""
    dims = model_dims(model.config)
    return LexicoDictionary.identity("tiny", dims.num_layers, dims.num_kv_heads, dims.head_dim, key_space)


def random_dictionary(
    model: torch.nn.Module, atoms: int = 64, seed: int = 0, key_space: str = "post_rope"
) -> LexicoDictionary:
    """Random unit-norm atoms (lossy): exercises compression without a trained dictionary."""
    dims = model_dims(model.config)
    gen = torch.Generator().manual_seed(seed)
    shape = (dims.num_layers, dims.head_dim, atoms)
    keys, values = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    keys, values = keys / keys.norm(dim=1, keepdim=True), values / values.norm(dim=1, keepdim=True)
    meta = DictionaryMeta(
        "tiny", dims.num_layers, dims.num_kv_heads, dims.head_dim, atoms, 4, corpus="random", key_space=key_space
    )
    return LexicoDictionary(keys, values, meta)


def rotate_complex(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Independent RoPE (rotate-half layout): pair (x_i, x_{i+m/2}) as a complex number times e^{i angle}."""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1)


def reference_generate(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int, cache=None) -> torch.Tensor:
    """Greedy ids with transformers' stock sdpa attention and a DynamicCache (the reference)."""
    from transformers import DynamicCache

    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        cache = DynamicCache(config=model.config) if cache is None else cache
        with torch.inference_mode():
            return model.generate(
                input_ids,
                past_key_values=cache,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
    finally:
        model.set_attn_implementation(previous)


def lexico_generate(model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int, cache) -> torch.Tensor:
    """Greedy ids with a LexicoCache (the model must already use "lexico" attention)."""
    with torch.inference_mode():
        return model.generate(
            input_ids, past_key_values=cache, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model work on one CPU thread (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    at these sizes threads only add overhead, and on a loaded 2-core machine their spinning makes each forward
    call many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
