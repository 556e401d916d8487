"""`lexico-chat eval perplexity`: teacher-forced perplexity with a full cache and with a LexicoCache.

The text is fed in chunks (default 256 tokens) through the cache, so most tokens are predicted from
context that the LexicoCache holds compressed. The pieces (``chunked_nll``, ``perplexity``,
``lexico_and_full_nll``) are reusable by other evals.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

from lexico_chat.config import CacheConfig
from lexico_chat.engine.options import DEFAULT_PREFILL_CHUNK
from lexico_chat.errors import LexicoError
from lexico_chat.output import emit

__all__ = ["register", "run", "chunked_nll", "perplexity", "lexico_and_full_nll", "perplexity_eval", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = DEFAULT_PREFILL_CHUNK  # what the chat's document prefill uses: measure what users get


def chunked_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    cache,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Negative log-likelihood of every token after the first, feeding ``input_ids`` in chunks.

    Parameters
    ----------
    model : causal LM; input_ids : (1, T) int64, T >= 2; cache : a Cache (filled as it goes).
    chunk_size : tokens per forward call; progress : called with each chunk's token count.

    Returns
    -------
    (T - 1,) float32 NLL of tokens 1..T-1, each predicted from all tokens before it.
    """
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
        raise ValueError(f"`input_ids` must have shape (1, T) with T >= 2, got {tuple(input_ids.shape)}")
    total = input_ids.shape[1]
    parts = []
    with torch.inference_mode():
        for start in range(0, total, chunk_size):
            chunk = input_ids[:, start : start + chunk_size]
            logits = model(input_ids=chunk, past_key_values=cache, use_cache=True).logits[0].float()  # (t, V)
            targets = input_ids[0, start + 1 : start + chunk.shape[1] + 1]  # the next token of each position
            parts.append(torch.nn.functional.cross_entropy(logits[: targets.shape[0]], targets, reduction="none"))
            if progress is not None:
                progress(chunk.shape[1])
    return torch.cat(parts)


def perplexity(nll: torch.Tensor) -> float:
    """exp(mean NLL) of a (T,) tensor of per-token negative log-likelihoods."""
    return math.exp(float(nll.double().mean()))


def lexico_and_full_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    dictionary,
    *,
    config: CacheConfig,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[str], Callable[[int], object]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-token NLL with a DynamicCache and with a LexicoCache of ``config``, and the LexicoCache's final
    ``kv_fraction`` (``lexico_chat.memory``: every byte held, settled after the last chunk).

    ``progress(stage_name)`` (e.g. ``ProgressBar.stage``) returns a callable taking each chunk's token count.
    """
    from transformers import DynamicCache

    from lexico_chat.cache import LexicoCache

    stage = progress or (lambda name: None)
    full = chunked_nll(
        model, input_ids, DynamicCache(config=model.config), chunk_size=chunk_size, progress=stage("full cache")
    )
    cache = LexicoCache.from_model(model, dictionary, config)
    lexico = chunked_nll(model, input_ids, cache, chunk_size=chunk_size, progress=stage("lexico cache"))
    return full, lexico, cache.memory().kv_fraction


def perplexity_eval(model: torch.nn.Module, input_ids: torch.Tensor, dictionary, **kwargs) -> dict:
    """``{"tokens", "full_ppl", "lexico_ppl", "kv_fraction"}`` for (1, T) ids; kwargs as ``lexico_and_full_nll``."""
    full, lexico, fraction = lexico_and_full_nll(model, input_ids, dictionary, **kwargs)
    return {
        "tokens": int(input_ids.shape[1]),
        "full_ppl": perplexity(full),
        "lexico_ppl": perplexity(lexico),
        "kv_fraction": fraction,
    }


def register(subparsers) -> None:
    from lexico_chat.options import (
        add_cache_options,
        add_dictionary_options,
        add_json_option,
        add_model_options,
        non_negative_int,
        positive_int,
    )

    p = subparsers.add_parser("perplexity", help="teacher-forced perplexity, full cache vs Lexico cache")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    add_model_options(p)
    add_dictionary_options(p)
    add_cache_options(p)
    p.add_argument("--max-tokens", type=positive_int, default=2048, help="tokens of the text used (default 2048)")
    p.add_argument(
        "--skip", type=non_negative_int, default=0, help="tokens skipped at the start of the text (default 0)"
    )
    p.add_argument(
        "--chunk",
        type=positive_int,
        default=DEFAULT_CHUNK,
        help="tokens per forward (default: the chat's prefill chunk)",
    )
    add_json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lexico_chat.lookup import find_dictionary
    from lexico_chat.models import load_model
    from lexico_chat.options import cache_config
    from lexico_chat.progress import ProgressBar
    from lexico_chat.textfile import read_text

    text = read_text(args.text)
    loaded = load_model(args.model, device=args.device)
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, args.dictionary)
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"][:, args.skip : args.skip + args.max_tokens]
    if ids.shape[1] < 2:
        raise LexicoError(f"{args.text} holds fewer than 2 tokens after the {args.skip} skipped (--skip)")
    device = next(loaded.model.parameters()).device
    with ProgressBar(2 * ids.shape[1], "perplexity", unit="tok") as bar:
        result = perplexity_eval(
            loaded.model,
            ids.to(device),
            dictionary,
            config=cache_config(args),
            chunk_size=args.chunk,
            progress=bar.stage,
        )
    emit(result, args.json)
    return 0
