"""Measure a dictionary's per-layer sensitivity profile and, with --write, record it in the file's metadata.

    python benchmarks/layer_sensitivity.py DICTIONARY [--text data/heldout.txt] [--tokens 2048] [--write]

For each layer l: perplexity of the default model on the first ``--tokens`` tokens of ``--text`` (held-out
text), fed in the chat's prefill chunks, with layer l's keys and values coded at ``budget.PROFILE_SPARSITY``
atoms and every other layer at ``budget.PROFILE_REFERENCE``; the profile is each layer's perplexity minus that
of all layers at the reference. One JSON line per layer on stdout, then the profile. ``--write`` stores it as
``layer_sensitivity`` in the dictionary's metadata (atomically; the tensors, and so the fingerprint that saved
sessions name, are unchanged), which ``--layer-budget profile`` reads. About 23 s per layer for the default
30-layer model at 2,048 tokens on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from lexico_chat.budget import PROFILE_REFERENCE, PROFILE_SPARSITY
from lexico_chat.cache import LexicoCache
from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.evals.perplexity import chunked_nll, perplexity
from lexico_chat.models import load_model
from lexico_chat.textfile import read_text


def layer_perplexity(model, ids, dictionary, sparsities: list[int]) -> float:
    """Perplexity of (1, T) ``ids`` with layer i's keys and values coded at ``sparsities[i]`` atoms."""
    cache = LexicoCache.from_model(
        model, dictionary, CacheConfig(sparsity=max(sparsities), atoms=dictionary.meta.atoms)
    )
    for layer, s in zip(cache.lexico_layers, sparsities, strict=True):
        layer.key_sparsity = layer.value_sparsity = s
    return perplexity(chunked_nll(model, ids, cache))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dictionary")
    parser.add_argument("--text", default="data/heldout.txt")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--write", action="store_true", help="record the profile in the dictionary's metadata")
    args = parser.parse_args()
    dictionary = LexicoDictionary.load(args.dictionary)
    loaded = load_model(None, device="cpu")
    ids = loaded.tokenizer(read_text(args.text), return_tensors="pt").input_ids[:, : args.tokens]
    layers = dictionary.meta.num_layers
    base = layer_perplexity(loaded.model, ids, dictionary, [PROFILE_REFERENCE] * layers)
    print(json.dumps({"layer": None, "ppl": base}), flush=True)
    profile = []
    for index in range(layers):
        start = time.time()
        sparsities = [PROFILE_REFERENCE] * layers
        sparsities[index] = PROFILE_SPARSITY
        ppl = layer_perplexity(loaded.model, ids, dictionary, sparsities)
        profile.append(ppl - base)
        print(json.dumps({"layer": index, "ppl": ppl, "added": ppl - base, "seconds": time.time() - start}), flush=True)
    print(json.dumps({"layer_sensitivity": profile, "tokens": ids.shape[1], "text": args.text}), flush=True)
    if args.write:
        meta = dataclasses.replace(dictionary.meta, layer_sensitivity=tuple(profile))
        LexicoDictionary(dictionary.keys, dictionary.values, meta).save(args.dictionary)


if __name__ == "__main__":
    main()
