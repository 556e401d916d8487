"""Train the shipped dictionaries of the default model on a CUDA machine (fp32 model, larger sample).

    python scripts/train_gpu.py MODEL.gguf CORPUS_DIR OUTDIR

Writes OUTDIR/SmolLM2-135M-Instruct-N{1024,4096}.safetensors. Same code path as
``lexico-chat train-dictionary``; only the device, dtype and sample size differ.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import torch

from lexico_chat.models import load_model
from lexico_chat.textfile import read_corpus
from lexico_chat.training.trainer import TrainConfig, train_dictionary

SETTINGS = {"iters": 12, "max_vectors": 200_000, "max_tokens": 400_000, "max_heldout": 8192, "sparsity": 8}
ATOMS = (1024, 4096)
if os.environ.get("LEXICO_SMOKE"):  # a quick check of this script on CPU
    SETTINGS = {"iters": 1, "max_vectors": 3000, "max_tokens": 3000, "max_heldout": 500, "sparsity": 4}
    ATOMS = (64, 128)
if os.environ.get("LEXICO_ATOMS"):
    ATOMS = tuple(int(a) for a in os.environ["LEXICO_ATOMS"].split(","))
for key, env in (("iters", "LEXICO_ITERS"), ("max_vectors", "LEXICO_VECTORS"), ("max_tokens", "LEXICO_TOKENS")):
    if os.environ.get(env):
        SETTINGS[key] = int(os.environ[env])
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def main() -> None:
    model_path, corpus, outdir = sys.argv[1:4]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loaded = load_model(model_path, device=DEVICE, dtype=torch.float32)
    texts = read_corpus([corpus])
    for atoms in ATOMS:
        start = time.time()
        config = TrainConfig(atoms=atoms, **SETTINGS)
        out = f"{outdir}/SmolLM2-135M-Instruct-N{atoms}.safetensors"
        note = "data/corpus/train (scripts/prepare_corpus.py --python-docs --docs-chars 1200000)"
        d = train_dictionary(loaded, texts, out, config, corpus_note=note, workdir=f"{outdir}/work-n{atoms}")
        print(
            f"N={atoms}: {time.time() - start:.0f} s; held-out keys {d.meta.heldout['keys']} "
            f"values {d.meta.heldout['values']}",
            flush=True,
        )
        print(f"  sampled keys {d.meta.heldout['sampled_keys']} values {d.meta.heldout['sampled_values']}", flush=True)


if __name__ == "__main__":
    main()
