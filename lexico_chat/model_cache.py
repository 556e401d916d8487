"""GGUF files converted once to safetensors model folders in the user cache.

transformers re-reads and dequantises a GGUF on every load (about 25 s for the default model on 2 CPU cores,
most of it not the dequantising itself); a safetensors folder loads in about a second. The first load of a
GGUF saves the dequantised fp32 weights with the tokenizer into ``<user cache>/models/<stem>-<sha256[:16]>/``
(atomically), and later loads read that folder. A folder is found by the GGUF's path, size and mtime as
recorded at conversion, so the file is hashed only when it is new or has changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from lexico_chat.atomic import write_folder_atomic
from lexico_chat.paths import user_cache_folder

__all__ = ["SOURCE_FILE", "converted_folder", "file_sha256", "models_folder", "save_converted"]

logger = logging.getLogger(__name__)

SOURCE_FILE = "lexico-source.json"  # what the folder was converted from


def models_folder() -> Path:
    return user_cache_folder() / "models"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _stat(gguf: Path) -> dict:
    info = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _source(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None


def converted_folder(gguf: Path) -> Path:
    """The cache folder for ``gguf``: the one converted from this very file (same path, size and mtime), else
    the one named by its sha256, which may not exist yet (then ``save_converted`` writes it)."""
    stat = _stat(gguf)
    root = models_folder()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        source = _source(folder)
        if source is not None and all(source.get(k) == v for k, v in stat.items()):
            return folder
    return root / f"{gguf.stem}-{file_sha256(gguf)[:16]}"


def save_converted(folder: Path, gguf: Path, model, tokenizer) -> Path:
    """Write ``model`` (loaded from ``gguf``, fp32) and ``tokenizer`` as a safetensors folder at ``folder``."""

    # transformers marks a GGUF-loaded model as quantized and refuses to save it, though its weights are
    # plain dequantised tensors: drop the marker (and the GGUF entry of the config, which would make the folder
    # load as a GGUF again)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {**_stat(gguf), "sha256": file_sha256(gguf), "dtype": str(model.dtype).removeprefix("torch.")}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1))

    write_folder_atomic(folder, write)
    logger.info("converted %s to %s", gguf, folder)
    return folder
