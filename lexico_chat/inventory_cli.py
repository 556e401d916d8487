"""`lexico-chat models` and `lexico-chat dictionaries`: what is available on this machine."""

from __future__ import annotations

import argparse
import json

from lexico_chat.options import add_json_option

__all__ = ["register"]


def register(commands) -> None:
    models = commands.add_parser("models", help="list the models available locally and their dictionaries")
    add_json_option(models)
    models.set_defaults(func=run_models)
    dictionaries = commands.add_parser("dictionaries", help="list the dictionaries found (shipped and trained)")
    add_json_option(dictionaries)
    dictionaries.set_defaults(func=run_dictionaries)


def local_models() -> list[dict]:
    """The embedded default (where installed) and every model folder of the Hugging Face cache, each with its
    size and the dictionary sizes N the lookup finds for it."""
    from lexico_chat.errors import LexicoError
    from lexico_chat.lookup import list_dictionaries
    from lexico_chat.model_cache import converted_folder
    from lexico_chat.resolve import DEFAULT_MODEL_ID, cached_models, default_gguf_path

    rows = []
    try:
        gguf = default_gguf_path()
        converted = converted_folder(gguf).is_dir()
        note = "embedded default (GGUF" + (", converted)" if converted else "; converted on first use)")
        rows.append({"model": DEFAULT_MODEL_ID, "source": note, "size_bytes": gguf.stat().st_size, "path": str(gguf)})
    except LexicoError:
        pass  # not installed: nothing to list
    for cached in cached_models():
        row = {"model": cached.model_id, "source": "Hugging Face cache", "size_bytes": cached.size_bytes}
        rows.append({**row, "path": str(cached.snapshot)})
    files = [f for f in list_dictionaries() if f.found_by_lookup]
    for row in rows:
        row["dictionaries"] = sorted({f.meta.atoms for f in files if _same_model(f.meta.model_id, row["model"])})
    return rows


def _same_model(a: str, b: str) -> bool:
    from lexico_chat.dictionary import model_slug

    return model_slug(a) == model_slug(b)


def _print(args: argparse.Namespace, name: str, rows: list[dict], headers: list[str], cells, empty: str) -> int:
    """``{name: rows}`` as JSON with --json, else a table of ``cells(row)`` (``empty`` when there are none)."""
    from lexico_chat.output import table

    if args.json:
        print(json.dumps({name: rows}))
    else:
        print(table(headers, [cells(row) for row in rows]) if rows else empty)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from lexico_chat.units import human_bytes

    def cells(r: dict) -> list[str]:
        return [r["model"], human_bytes(r["size_bytes"]), _atoms(r["dictionaries"]), r["source"], r["path"]]

    headers = ["model", "size", "dictionaries", "source", "path"]
    return _print(args, "models", local_models(), headers, cells, "no local models (`make setup` installs the default)")


def _atoms(atoms: list[int]) -> str:
    return " ".join(f"N={n}" for n in atoms) if atoms else "none (trained on first run)"


def dictionary_rows() -> list[dict]:
    """Every dictionary file found: model, N, key space, training sparsity, held-out errors, size, path."""
    from lexico_chat.lookup import list_dictionaries

    rows = []
    for found in list_dictionaries():
        meta, held = found.meta, found.meta.heldout
        errors = {kind: held.get(kind, {}) for kind in ("keys", "values")}
        rows.append(
            {
                "model": meta.model_id,
                "atoms": meta.atoms,
                "key_space": meta.key_space,
                "train_sparsity": meta.train_sparsity,
                "heldout": errors,
                "size_bytes": found.size_bytes,
                "origin": ("shipped" if found.shipped else "trained")
                + ("" if found.found_by_lookup else ", --dictionary only"),
                "found_by_lookup": found.found_by_lookup,
                "path": str(found.path),
            }
        )
    return rows


def run_dictionaries(args: argparse.Namespace) -> int:
    from lexico_chat.units import human_bytes

    def cells(r: dict) -> list[str]:
        return [r["model"], str(r["atoms"]), r["key_space"].replace("_", "-"), str(r["train_sparsity"]),
                _errors(r["heldout"]), human_bytes(r["size_bytes"]), r["origin"], r["path"]]  # fmt: skip

    headers = ["model", "N", "keys", "train s", "held-out error (s: keys/values)", "size", "origin", "path"]
    return _print(args, "dictionaries", dictionary_rows(), headers, cells, "no dictionaries found")


def _errors(heldout: dict) -> str:
    """``4: 0.19/0.45  8: 0.13/0.29`` (relative error of keys/values at each sparsity), or "n/a"."""
    keys, values = heldout.get("keys", {}), heldout.get("values", {})
    parts = [f"{s}: {keys[s]:.3f}/{values[s]:.3f}" for s in sorted(keys, key=int) if s in values]
    return "  ".join(parts) or "n/a"
