"""`lexico-chat eval rre`: relative reconstruction error of the model's keys and values on a text."""

from __future__ import annotations

import argparse

import torch

from lexico_chat.errors import LexicoError
from lexico_chat.omp import fastest_select_dtype
from lexico_chat.output import emit
from lexico_chat.training.collect import token_windows, window_kv
from lexico_chat.training.fit import relative_error

__all__ = ["register", "run", "reconstruction_error"]


def register(subparsers) -> None:
    from lexico_chat.options import add_dictionary_options, add_json_option, add_model_options, positive_int

    p = subparsers.add_parser("rre", help="mean ||x - x̂|| / ||x|| of keys and values per layer on a text")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    add_model_options(p)
    add_dictionary_options(p)
    p.add_argument("--max-tokens", type=positive_int, default=4096)
    add_json_option(p)
    p.set_defaults(func=run)


def reconstruction_error(model, tokenizer, text: str, dictionary, sparsity: int, max_tokens: int = 4096) -> dict:
    """Mean relative error of every layer's keys and values of ``text`` (first ``max_tokens`` tokens)."""
    if sparsity > min(dictionary.meta.head_dim, dictionary.meta.atoms):
        raise LexicoError(
            f"--sparsity must be at most {min(dictionary.meta.head_dim, dictionary.meta.atoms)}, got {sparsity}"
        )
    windows = token_windows(tokenizer, [text], 1024)
    picked, tokens = [], 0
    for w in windows:
        if tokens >= max_tokens:
            break
        picked.append(w[: max_tokens - tokens])
        tokens += len(picked[-1])
    sums = None
    select = fastest_select_dtype(next(model.parameters()).device)  # as the cache selects atoms by default
    for ids in picked:
        per_layer = window_kv(model, ids, dictionary.meta.key_space)
        errs = [
            (
                relative_error(k, dk, sparsity, select_dtype=select).sum(),
                relative_error(v, dv, sparsity, select_dtype=select).sum(),
                k.shape[0],
            )
            for (k, v), (dk, dv) in zip(per_layer, zip(dictionary.keys, dictionary.values))
        ]
        sums = errs if sums is None else [(a + c, b + e, n + f) for (a, b, n), (c, e, f) in zip(sums, errs)]
    per = [{"layer": i, "keys": float(k / n), "values": float(v / n)} for i, (k, v, n) in enumerate(sums)]
    return {
        "atoms": dictionary.meta.atoms,
        "sparsity": sparsity,
        "tokens": tokens,
        "keys": sum(p["keys"] for p in per) / len(per),
        "values": sum(p["values"] for p in per) / len(per),
        "per_layer": per,
    }


def run(args: argparse.Namespace) -> int:
    from lexico_chat.lookup import find_dictionary
    from lexico_chat.models import load_model
    from lexico_chat.textfile import read_text

    text = read_text(args.text)
    loaded = load_model(args.model, device=args.device)
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, args.dictionary)
    with torch.inference_mode():
        result = reconstruction_error(loaded.model, loaded.tokenizer, text, dictionary, args.sparsity, args.max_tokens)
    emit(result, args.json)
    return 0
