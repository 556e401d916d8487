"""Where a default-cache prefill and decode spend their time on CPU: OMP, compressed attention, the rest.

    python benchmarks/cpu_profile.py [--context 4096] [--decode-tokens 32] [--atoms 4096]

Loads the default model and dictionary, prefills ``--context`` seeded random tokens in the chat's 512-token
chunks into a default LexicoCache, then decodes ``--decode-tokens`` steps. The OMP, the compressed attention
(decode and chunk paths) and the compression are wrapped with timers; the model's own work is the rest. Prints
one JSON object. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch

from lexico_chat.attention import dispatch
from lexico_chat.cache import LexicoCache
from lexico_chat.cache import layer as layer_module
from lexico_chat.evals.speed import context_ids, interleaved_prefill
from lexico_chat.lookup import find_dictionary
from lexico_chat.models import load_model

SPENT: dict[str, float] = defaultdict(float)


def timed(owner, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper adding its wall time to ``SPENT[label]``."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[label] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--atoms", type=int, default=4096)
    args = parser.parse_args()
    timed(dispatch, "reference_attention", "attention_reference")
    timed(dispatch, "chunk_attention", "attention_chunk")
    timed(layer_module, "omp", "omp")
    timed(layer_module.LexicoLayer, "_compress", "compress_total")
    loaded = load_model(None, device="cpu")
    model = loaded.model
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, None)
    ids = context_ids(model.config.get_text_config().vocab_size, args.context)
    interleaved_prefill(model, ids[:, :512], [LexicoCache.from_model(model, dictionary)])  # warm-up
    SPENT.clear()
    cache = LexicoCache.from_model(model, dictionary)
    start = time.perf_counter()
    _, logits = interleaved_prefill(model, ids, [cache])
    prefill = {"seconds": time.perf_counter() - start, **{k: v for k, v in SPENT.items()}}
    SPENT.clear()
    token = logits[0].argmax(-1, keepdim=True)
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        seconds = time.perf_counter() - start
    per_step = {k: v * 1e3 / args.decode_tokens for k, v in SPENT.items()}
    decode = {"ms_per_step": seconds * 1e3 / args.decode_tokens, **per_step}
    prefill["tokens_per_s"] = args.context / prefill["seconds"]
    print(json.dumps({"context": args.context, "prefill": prefill, "decode_ms": decode}, indent=1))


if __name__ == "__main__":
    main()
