"""Held-out reconstruction error of the shipped dictionaries against a sampled-vector baseline.

    python benchmarks/dictionary_quality.py --heldout data/heldout.txt --train-sample data/corpus/train/essay-avg.txt

For N in (1024, 4096) and s in (4, 8, 16, 32): mean relative error of every layer's keys and values on
``--heldout`` (text outside the training corpus), and the same for a dictionary made of N randomly
sampled K/V vectors of ``--train-sample`` (normalised): the baseline a trained dictionary must beat.
Prints a Markdown table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json

import torch

from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.lookup import find_dictionary
from lexico_chat.models import load_model
from lexico_chat.omp import fastest_select_dtype
from lexico_chat.textfile import read_text
from lexico_chat.training.collect import token_windows, window_kv
from lexico_chat.training.fit import relative_error, sampled_dictionary


def sampled_baseline(loaded, text: str, atoms: int, seed: int = 0) -> LexicoDictionary:
    """Per layer, ``atoms`` normalised K/V vectors sampled from ``text`` (keys in the shipped file's key space)."""
    shipped = find_dictionary(loaded.model_id, loaded.dims, atoms)
    windows = token_windows(loaded.tokenizer, [text], 1024)
    per_window = [window_kv(loaded.model, w, shipped.meta.key_space) for w in windows]
    keys, values = [], []
    for layer in range(len(per_window[0])):
        k = torch.cat([w[layer][0] for w in per_window])
        v = torch.cat([w[layer][1] for w in per_window])
        keys.append(sampled_dictionary(k, atoms, seed + layer))
        values.append(sampled_dictionary(v, atoms, seed + layer + 1000))
    return LexicoDictionary(torch.stack(keys), torch.stack(values), shipped.meta)


def heldout_vectors(
    loaded, text: str, max_tokens: int, key_space: str = "post_rope"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of the first ``max_tokens`` tokens of ``text``, each (H*T, m)."""
    ids = token_windows(loaded.tokenizer, [text], 1024)
    picked, total = [], 0
    for w in ids:
        if total >= max_tokens:
            break
        picked.append(w[: max_tokens - total])
        total += len(picked[-1])
    per_window = [window_kv(loaded.model, w, key_space) for w in picked]
    return [
        (torch.cat([w[i][0] for w in per_window]), torch.cat([w[i][1] for w in per_window]))
        for i in range(len(per_window[0]))
    ]


def mean_error(vectors, dictionary: LexicoDictionary, s: int) -> tuple[float, float]:
    """Mean over layers of the mean relative error of keys and of values."""
    select = fastest_select_dtype("cpu")  # as the cache selects atoms on this machine
    keys = [relative_error(k, dictionary.keys[i], s, select_dtype=select).mean() for i, (k, _) in enumerate(vectors)]
    vals = [relative_error(v, dictionary.values[i], s, select_dtype=select).mean() for i, (_, v) in enumerate(vectors)]
    return float(sum(keys) / len(keys)), float(sum(vals) / len(vals))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--train-sample", required=True)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--atoms", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--sparsity", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--out", default="benchmarks/dictionary_quality.json")
    args = parser.parse_args()
    loaded = load_model()
    heldout, sample = read_text(args.heldout), read_text(args.train_sample)
    rows = []
    with torch.inference_mode():
        vectors = {}  # per key space: the held-out keys must be in the space the dictionary codes
        for atoms in args.atoms:
            dictionaries = {
                "trained": find_dictionary(loaded.model_id, loaded.dims, atoms),
                "sampled": sampled_baseline(loaded, sample, atoms),
            }
            space = dictionaries["trained"].meta.key_space
            if space not in vectors:
                vectors[space] = heldout_vectors(loaded, heldout, args.max_tokens, space)
            for s in args.sparsity:
                for name, d in dictionaries.items():
                    keys, values = mean_error(vectors[space], d, s)
                    row = {"atoms": atoms, "sparsity": s, "dictionary": name, "tokens": args.max_tokens}
                    rows.append({**row, "keys": keys, "values": values})
                    print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    print(
        "\n| N | s | keys (trained) | keys (sampled) | values (trained) | values (sampled) |\n|---|---|---|---|---|---|"
    )
    for atoms in args.atoms:
        for s in args.sparsity:
            t = next(r for r in rows if r["atoms"] == atoms and r["sparsity"] == s and r["dictionary"] == "trained")
            b = next(r for r in rows if r["atoms"] == atoms and r["sparsity"] == s and r["dictionary"] == "sampled")
            print(f"| {atoms} | {s} | {t['keys']:.3f} | {b['keys']:.3f} | {t['values']:.3f} | {b['values']:.3f} |")


if __name__ == "__main__":
    main()
