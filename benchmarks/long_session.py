"""A 100-turn conversation: process RSS growth against the growth of the KV cache's own tensors.

    python benchmarks/long_session.py [--turns 100] [--sparsity 8] [--atoms 4096] [--max-new-tokens 24]

Prints one JSON object: turns, context tokens, RSS growth, cache growth (bytes of tensors held, capacity
included) and their ratio (the target: RSS growth within 1.2x of what the cache accounts for).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from lexico_chat.engine import SamplingConfig, SessionOptions, load_session
from lexico_chat.engine.sysstats import rss_bytes


def held_bytes(session) -> int:
    stats = session.stats()
    return stats.allocated_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--sparsity", type=int, default=8)
    parser.add_argument("--atoms", type=int, default=4096)
    parser.add_argument("--cache", default="lexico")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    session = load_session(SessionOptions(cache=args.cache, sparsity=args.sparsity, atoms=args.atoms))
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    for _ in session.send("Hello! Let's talk about numbers.", sampling):
        pass
    gc.collect()
    rss0, kv0, start = rss_bytes(), held_bytes(session), time.time()
    for turn in range(args.turns):
        for _ in session.send(f"Tell me one short fact about the number {turn + 2}.", sampling):
            pass
    gc.collect()
    rss1, kv1 = rss_bytes(), held_bytes(session)
    stats = session.stats()
    print(
        json.dumps(
            {
                "turns": args.turns,
                "cache": args.cache,
                "context_tokens": stats.context_tokens,
                "tokens_compressed": stats.tokens_compressed,
                "kv_fraction": stats.kv_fraction,
                "rss_growth_bytes": rss1 - rss0,
                "cache_growth_bytes": kv1 - kv0,
                "ratio": (rss1 - rss0) / max(kv1 - kv0, 1),
                "seconds": time.time() - start,
            }
        )
    )


if __name__ == "__main__":
    main()
