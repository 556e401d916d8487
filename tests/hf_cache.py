"""Building a Hugging Face hub cache layout in a temporary ``HF_HOME`` (no tests here): ``models--ORG--NAME``
with ``blobs/``, ``refs/main`` and a snapshot of links to the blobs, as the hub client writes it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tests.conftest import build_tiny_model
from tests.test_server_support import char_tokenizer


def tiny_model_folder(folder: Path, seed: int = 3) -> Path:
    """A tiny random Llama with the printable character tokenizer, saved as a model folder."""
    build_tiny_model("llama", seed=seed).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


def add_to_cache(hf_home: Path, model_id: str, files: Path, revision: str = "main") -> Path:
    """Copy the model folder ``files`` into the hub cache under ``hf_home`` as ``model_id``; returns the
    snapshot folder. ``revision="main"`` also points ``refs/main`` at it."""
    repo = hf_home / "hub" / f"models--{model_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{model_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in sorted(files.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, repo / "blobs" / digest)
        os.symlink(os.path.relpath(repo / "blobs" / digest, snapshot), snapshot / path.name)
    if revision == "main":
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot
