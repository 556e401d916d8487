"""Model-level measurements behind ``benchmarks/gpu_bench.py``: decode ms/token and prefill tokens/s.

A Llama-3.2-3B-shaped model with random bf16 weights (built on the device, nothing downloaded). Decode:
SDPA over a preallocated ``StaticCache`` (the fair full-cache baseline) and over a ``DynamicCache``, vs
LexicoCache through the PyTorch path and through the Triton path, every cache filled directly with random
states / random codes (no prefill; the static and dynamic caches with the same states, checked to give the
same first logits), then ``steps`` greedy steps timed
(compressions of the buffer happen meanwhile, as in real decoding). Prefill: real prefill-and-compress
of a shorter context, timed end to end. The library dispatches OMP and decode attention to the Triton
kernels by itself on CUDA, so the Triton rows just run the model; the PyTorch rows run it inside
``lexico_chat.accel.pytorch_path()``.
"""

from __future__ import annotations

import contextlib
import time

import torch
from gpu_measure import peak_gib, sync, verdict

from lexico_chat.accel import pytorch_path
from tests.kernel_cases import relative_error

__all__ = ["model_rows", "LLAMA_3B", "TINY", "PREFILL_TOKENS"]

LLAMA_3B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
                rope_scaling=dict(rope_type="llama3", factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                                  original_max_position_embeddings=8192))  # fmt: skip
TINY = dict(hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=4096)  # fmt: skip
PREFILL_TOKENS = 4096
SPARSITY, ATOMS, BUFFER = 8, 4096, 128
LOGITS_TOLERANCE = 5e-2  # first decode step, Triton vs PyTorch attention on the same cache, bf16 model


def model_rows(run, device: torch.device, contexts: list[int], triton_ok: bool, smoke: bool, steps: int) -> None:
    """Decode rows for each context (while the budget lasts), then the prefill rows."""
    if not run.fits(30, "model rows"):
        return
    model = _model(device, smoke)
    setup = dict(model=model, buffer=16 if smoke else BUFFER, steps=steps)
    setup["dictionary"] = _dictionary(model.config, 64 if smoke else ATOMS, device)
    variants = [("sdpa static cache", contextlib.nullcontext), ("sdpa full cache", contextlib.nullcontext)]
    variants += [("lexico pytorch", pytorch_path)] + [("lexico triton", contextlib.nullcontext)] * triton_ok
    limit = model.config.max_position_embeddings - steps - 8
    for ctx in [min(c, limit) for c in contexts]:
        if not run.fits(8 + ctx / 8192, f"decode at {ctx}"):
            break
        logits = {}
        for name, path in variants:
            logits[name] = run.attempt(f"decode {name} at {ctx}", _decode_row, run, setup, ctx, name, path)
        pairs = [("sdpa static cache", "sdpa full cache"), ("lexico triton", "lexico pytorch")]
        for a, b in pairs:  # the same random states / codes: the same first-step logits
            if logits.get(a) is not None and logits.get(b) is not None:
                err = relative_error(logits[a], logits[b])
                ok = verdict(err < LOGITS_TOLERANCE, f"{a} vs {b}")
                run.row("check", f"decode logits {ctx}", ok, err, "rel.err")
                run.failed |= err >= LOGITS_TOLERANCE
    tokens = 300 if smoke else PREFILL_TOKENS
    if run.fits(20, "prefill rows"):
        ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
        for name, path in variants:
            run.attempt(f"prefill {name}", _prefill_row, run, setup, ids, name, path)


def _decode_row(run, setup: dict, ctx: int, name: str, path) -> torch.Tensor:
    """Time decoding from a directly filled cache of ``ctx`` tokens; returns the first step's logits."""
    model, device = setup["model"], setup["model"].device
    _reset_peak(device)
    torch.manual_seed(ctx)
    if name == "sdpa static cache":
        cache = _fill_static(model, ctx, room=setup["steps"] + 8)
    elif name.startswith("sdpa"):
        cache = _fill_dynamic(model, ctx)
    else:
        cache = _fill_lexico(model, setup["dictionary"], ctx, setup["buffer"])
    with path():
        ms, logits = _decode_ms(model, cache, setup["steps"], device)
    run.row("decode", f"{ctx} tokens (direct fill)", name, ms, "ms/token", peak_gib=peak_gib(device),
            nvml_gib=_nvml_used_gib(device), cache_gib=_cache_bytes(cache) / 2**30)  # fmt: skip
    return logits


def _prefill_row(run, setup: dict, ids: torch.Tensor, name: str, path) -> None:
    _reset_peak(ids.device)
    with path():
        _prefill_seconds(setup, ids[:, : ids.shape[1] // 4], name)  # warm-up: compilations, first windows
        seconds = _prefill_seconds(setup, ids, name)
    tokens = ids.shape[1]
    run.row("prefill", f"{tokens} tokens (real)", name, tokens / seconds, "tokens/s", peak_gib=peak_gib(ids.device))


def _model(device: torch.device, smoke: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            LlamaConfig(**(TINY if smoke else LLAMA_3B)), dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    return model.eval()


def _dictionary(config, atoms: int, device: torch.device):
    from lexico_chat.dictionary import DictionaryMeta, LexicoDictionary

    layers, m = config.num_hidden_layers, config.head_dim
    keys, values = (torch.nn.functional.normalize(torch.randn(layers, m, atoms, device=device), dim=1) for _ in "kv")
    meta = DictionaryMeta("random", layers, config.num_key_value_heads, m, atoms, SPARSITY, corpus="random")
    return LexicoDictionary(keys, values, meta)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _fill_dynamic(model, ctx: int):
    from transformers import DynamicCache

    model.set_attn_implementation("sdpa")
    cfg = model.config
    cache = DynamicCache(config=cfg)
    shape, dev = (1, cfg.num_key_value_heads, ctx, cfg.head_dim), model.device
    for i in range(cfg.num_hidden_layers if ctx else 0):
        cache.update(*(torch.randn(shape, dtype=torch.bfloat16, device=dev) for _ in "kv"), i)
    return cache


def _fill_static(model, ctx: int, room: int):
    """A preallocated ``StaticCache`` of ``ctx + room`` tokens holding the states ``_fill_dynamic`` gives (same
    seed)."""
    from transformers import StaticCache

    dynamic = _fill_dynamic(model, ctx)
    cache = StaticCache(config=model.config, max_cache_len=ctx + room)
    for i, layer in enumerate(dynamic.layers if ctx else ()):
        cache.update(layer.keys, layer.values, i)
    return cache


def _fill_lexico(model, dictionary, ctx: int, buffer: int):
    """A LexicoCache holding ``ctx`` tokens (0: empty): random codes, then ``buffer - 1`` random states, so that
    the first decode step compresses nothing (its logits compare attention paths alone)."""
    from lexico_chat.cache import LexicoCache
    from lexico_chat.config import CacheConfig

    config = CacheConfig(sparsity=SPARSITY, atoms=dictionary.meta.atoms, buffer=buffer)
    cache = LexicoCache.from_model(model, dictionary, config)
    if ctx == 0:
        return cache
    cfg, dev = model.config, model.device
    hkv, m, atoms, held = cfg.num_key_value_heads, cfg.head_dim, dictionary.meta.atoms, buffer - 1
    tc = ctx - held
    for layer in cache.lexico_layers:
        stub = torch.empty(1, hkv, 0, m, dtype=torch.bfloat16, device=dev)
        layer.lazy_initialization(stub, stub)
        for store in (layer.key_codes, layer.value_codes):
            idx = torch.randint(0, atoms, (1, hkv, tc, SPARSITY), dtype=torch.int16, device=dev)
            store.append(idx, 0.3 * torch.randn(1, hkv, tc, SPARSITY, device=dev))
        for states in (layer.key_buffer, layer.value_buffer):
            states.append(torch.randn(1, hkv, held, m, dtype=torch.bfloat16, device=dev))
    return cache


def _decode_ms(model, cache, steps: int, device: torch.device, warmup: int = 3) -> tuple[float, torch.Tensor]:
    """Mean ms per greedy step over ``steps`` steps after ``warmup`` ones, and the (vocab,) fp32 first logits."""
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    first = None
    with torch.inference_mode():
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            if i == 0:
                first = out.logits[0, -1].float().cpu()
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
    return (time.perf_counter() - start) * 1e3 / steps, first


def _prefill_seconds(setup: dict, ids: torch.Tensor, name: str) -> float:
    from lexico_chat.engine.prefill import prefill

    model = setup["model"]
    if name == "sdpa static cache":
        cache = _fill_static(model, 0, room=ids.shape[1])
    elif name.startswith("sdpa"):
        cache = _fill_dynamic(model, 0)
    else:
        cache = _fill_lexico(model, setup["dictionary"], 0, setup["buffer"])
    sync(ids.device)
    start = time.perf_counter()
    prefill(model, ids, cache, chunk_size=512)
    sync(ids.device)
    return time.perf_counter() - start


def _cache_bytes(cache) -> int:
    if hasattr(cache, "memory"):
        mem = cache.memory()
        return mem.kv_bytes
    return sum(
        t.numel() * t.element_size()
        for layer in cache.layers
        if layer.is_initialized
        for t in (layer.keys, layer.values)
    )


def _nvml_used_gib(device: torch.device) -> float | None:
    """Device memory in use (all processes) from NVML, or None without pynvml / on CPU."""
    if device.type != "cuda":
        return None
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30
    except pynvml.NVMLError:
        return None
