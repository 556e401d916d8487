"""`lexico-chat eval speed`: prefill tokens/s and decode ms/token at a given context, full vs Lexico cache.

The context is seeded random token ids (timing depends on shapes, not on content). Prefill is
chunked (512 tokens); decode is greedy for ``--decode-tokens`` steps (default 64, so the OMP cost of
the windows compressed meanwhile is amortised in). Compression is included in every Lexico figure.
The two caches are timed alternately, chunk by chunk and step by step, so that a change in machine
load during the run weighs on both figures alike.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from lexico_chat.config import CacheConfig
from lexico_chat.engine.options import DEFAULT_PREFILL_CHUNK
from lexico_chat.errors import LexicoError
from lexico_chat.output import emit
from lexico_chat.timing import timed

__all__ = ["register", "run", "context_ids", "interleaved_prefill", "interleaved_decode", "speed_eval"]


def context_ids(vocab_size: int, context: int, seed: int = 0) -> torch.Tensor:
    """(1, context) int64 seeded random token ids in [0, vocab_size)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, context), generator=gen)


def _timed_forward(model, ids: torch.Tensor, cache) -> tuple[float, torch.Tensor]:
    """Seconds for one forward of (1, t) ``ids`` into ``cache``, and the (1, vocab) last logits."""
    forward = partial(model, input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    seconds, output = timed(forward, ids.device)
    return seconds, output.logits[:, -1]


def interleaved_prefill(model, input_ids: torch.Tensor, caches: list, chunk_size: int = DEFAULT_PREFILL_CHUNK):
    """Prefill (1, T) ids into every cache, chunk by chunk in turn (so load drift hits all alike).

    Returns the seconds spent per cache and each cache's (1, vocab) last logits.
    """
    seconds, logits = [0.0] * len(caches), [None] * len(caches)
    with torch.inference_mode():
        for start in range(0, input_ids.shape[1], chunk_size):
            for i, cache in enumerate(caches):
                spent, logits[i] = _timed_forward(model, input_ids[:, start : start + chunk_size], cache)
                seconds[i] += spent
    return seconds, logits


def interleaved_decode(model, caches: list, logits: list, steps: int) -> list[float]:
    """Greedy-decode ``steps`` tokens into every cache, one step each in turn; mean ms per step per cache."""
    tokens = [lg.argmax(-1, keepdim=True) for lg in logits]  # (1, 1) each
    spent = [0.0] * len(caches)
    with torch.inference_mode():
        for _ in range(steps):
            for i, cache in enumerate(caches):
                seconds, last = _timed_forward(model, tokens[i], cache)
                spent[i] += seconds
                tokens[i] = last.argmax(-1, keepdim=True)
    return [total * 1e3 / steps for total in spent]


def speed_eval(
    model,
    dictionary,
    context: int,
    *,
    config: CacheConfig | None = None,
    decode_tokens: int = 64,
    chunk_size: int = DEFAULT_PREFILL_CHUNK,
) -> dict:
    """``{"context", "full_decode_ms", "lexico_decode_ms", "full_prefill_tps", "lexico_prefill_tps", "native"}``
    for a LexicoCache of ``config`` (default settings when None); ``native``: whether the native CPU kernels ran
    (``lexico_chat.native``; False on CUDA and with ``LEXICO_NATIVE=0``).

    The full (DynamicCache) and Lexico runs alternate chunk by chunk and step by step.
    """
    from transformers import DynamicCache

    from lexico_chat import native
    from lexico_chat.cache import LexicoCache

    device = next(model.parameters()).device
    ids = context_ids(model.config.get_text_config().vocab_size, context).to(device)

    def caches():
        return [
            DynamicCache(config=model.config),
            LexicoCache.from_model(model, dictionary, config),
        ]

    warm = caches()  # one-time costs (allocator, kernel selection) outside the timings
    interleaved_decode(model, warm, interleaved_prefill(model, ids[:, :64], warm, chunk_size)[1], 2)
    timed = caches()
    seconds, logits = interleaved_prefill(model, ids, timed, chunk_size)
    full_ms, lexico_ms = interleaved_decode(model, timed, logits, decode_tokens)
    return {
        "context": context,
        "full_decode_ms": full_ms,
        "lexico_decode_ms": lexico_ms,
        "full_prefill_tps": context / seconds[0],
        "lexico_prefill_tps": context / seconds[1],
        "native": device.type == "cpu" and native.available(),
    }


def register(subparsers) -> None:
    from lexico_chat.options import (
        add_cache_options,
        add_dictionary_options,
        add_json_option,
        add_model_options,
        positive_int,
    )

    p = subparsers.add_parser("speed", help="prefill tokens/s and decode ms/token, full cache vs Lexico cache")
    p.add_argument("--context", type=positive_int, required=True, help="context length in tokens")
    add_model_options(p)
    add_dictionary_options(p)
    add_cache_options(p)
    p.add_argument("--decode-tokens", type=positive_int, default=64, help="decode steps timed (default 64)")
    p.add_argument(
        "--chunk",
        type=positive_int,
        default=DEFAULT_PREFILL_CHUNK,
        help="prefill tokens per forward (default: the chat's)",
    )
    add_json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lexico_chat.lookup import find_dictionary
    from lexico_chat.models import load_model
    from lexico_chat.options import cache_config

    loaded = load_model(args.model, device=args.device)
    if args.context + args.decode_tokens > loaded.dims.max_positions:
        raise LexicoError(
            f"--context + --decode-tokens must be at most the model's {loaded.dims.max_positions} "
            f"positions, got {args.context} + {args.decode_tokens}"
        )
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, args.dictionary)
    result = speed_eval(
        loaded.model,
        dictionary,
        args.context,
        config=cache_config(args),
        decode_tokens=args.decode_tokens,
        chunk_size=args.chunk,
    )
    emit(result, args.json)
    return 0
