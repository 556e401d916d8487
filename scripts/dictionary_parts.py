"""Split a dictionary file into a keys file and a values file (each under a transfer size limit), or
join them back: used to bring dictionaries trained on a remote GPU back through a 16 MiB-per-file channel.

    python scripts/dictionary_parts.py split DICT.safetensors OUTDIR PREFIX
    python scripts/dictionary_parts.py join KEYS.safetensors VALUES.safetensors OUT.safetensors [--model-id ID]
"""

from __future__ import annotations

import dataclasses
import sys

from safetensors import safe_open
from safetensors.torch import save_file

from lexico_chat.dictionary import DictionaryMeta, LexicoDictionary


def split(path: str, outdir: str, prefix: str) -> None:
    d = LexicoDictionary.load(path)
    meta = {"lexico": d.meta.to_json()}
    for name in ("keys", "values"):
        save_file({name: getattr(d, name).half().contiguous()}, f"{outdir}/{prefix}_{name}.safetensors", metadata=meta)


def join(keys_path: str, values_path: str, out: str, model_id: str | None = None) -> None:
    with safe_open(keys_path, framework="pt") as fh:
        meta = DictionaryMeta.from_json(fh.metadata()["lexico"])
        keys = fh.get_tensor("keys").float()
    with safe_open(values_path, framework="pt") as fh:
        values = fh.get_tensor("values").float()
    if model_id:
        meta = dataclasses.replace(meta, model_id=model_id)
    LexicoDictionary(keys, values, meta).save(out)
    LexicoDictionary.load(out)  # validates


if __name__ == "__main__":
    if sys.argv[1] == "split":
        split(*sys.argv[2:5])
    else:
        args = sys.argv[2:]
        model = args[args.index("--model-id") + 1] if "--model-id" in args else None
        join(args[0], args[1], args[2], model)
