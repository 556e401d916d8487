"""Which tokens code badly? Relative OMP error of keys and values by position, for the shipped dictionary.

    python benchmarks/code_error_by_position.py --text data/heldout.txt --tokens 1024 --sparsity 4 8

Issue 16 asks whether tokens that code badly (attention sinks, outliers) should be kept exact. This reads the
first ``--tokens`` tokens of ``--text`` in one forward call, codes every layer's keys (in the dictionary's key
space) and values with OMP at each ``--sparsity``, and reports the relative error ||x - x̂|| / ||x||,
averaged over layers and KV heads, at positions 0, 1 and 2-3 (where sinks live) against the median, the
99th percentile and the maximum of the later positions. Prints one JSON object per sparsity.
"""

from __future__ import annotations

import argparse
import json

import torch

from lexico_chat.lookup import find_dictionary
from lexico_chat.models import load_model
from lexico_chat.omp import fastest_select_dtype
from lexico_chat.textfile import read_text
from lexico_chat.training.collect import token_windows, window_kv
from lexico_chat.training.fit import relative_error


def error_by_position(per_layer, dictionary, sparsity: int, tokens: int) -> torch.Tensor:
    """(2, T) mean relative error over layers and heads of keys (row 0) and values (row 1) at each position.

    ``per_layer``: ``window_kv`` output, per layer (keys, values) each (H*T, m), head-major."""
    rows = torch.zeros(2, tokens)
    for layer, (keys, values) in enumerate(per_layer):
        atoms = dictionary.layer(layer)
        for side, (x, d) in enumerate(((keys, atoms[0]), (values, atoms[1]))):
            err = relative_error(x, d.float(), sparsity, select_dtype=fastest_select_dtype("cpu"))
            rows[side] += err.view(-1, tokens).mean(0)
    return rows / len(per_layer)


def summary(err: torch.Tensor) -> dict:
    later = err[4:]
    return {
        "pos0": round(float(err[0]), 4),
        "pos1": round(float(err[1]), 4),
        "pos2_3": round(float(err[2:4].mean()), 4),
        "later_median": round(float(later.median()), 4),
        "later_p99": round(float(later.quantile(0.99)), 4),
        "later_max": round(float(later.max()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="held-out UTF-8 text")
    parser.add_argument("--tokens", type=int, default=1024, help="tokens read in one forward call (default 1024)")
    parser.add_argument("--sparsity", type=int, nargs="+", default=[4, 8], help="atoms per vector (default 4 8)")
    parser.add_argument("--atoms", type=int, default=4096, help="dictionary size N (default 4096)")
    args = parser.parse_args()
    loaded = load_model(None, device="cpu")
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms)
    ids = token_windows(loaded.tokenizer, [read_text(args.text)], args.tokens)[0]
    with torch.inference_mode():
        per_layer = window_kv(loaded.model, ids, dictionary.meta.key_space)
    for s in args.sparsity:
        keys, values = error_by_position(per_layer, dictionary, s, len(ids))
        row = {"sparsity": s, "tokens": len(ids), "key_space": dictionary.meta.key_space}
        print(json.dumps({**row, "keys": summary(keys), "values": summary(values)}))


if __name__ == "__main__":
    main()
