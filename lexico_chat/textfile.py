"""Reading user text files (documents, corpora, evaluation text) with one clear error per defect."""

from __future__ import annotations

import os
from pathlib import Path

from lexico_chat.errors import LexicoError

__all__ = ["read_text", "read_corpus", "regular_file"]


def regular_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` expanded, when it names a regular file; else LexicoError saying what it is instead (``what``
    names the expected file, e.g. "text file"). Never opens it, so a FIFO cannot block."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise LexicoError(f"{path} is a directory; give a {what}")
    if path.exists() and not path.is_file():
        raise LexicoError(f"{path} is not a regular file (a FIFO, socket or device); give a {what}")
    if not path.is_file():
        raise LexicoError(f"{what} not found: {path}")
    return path


def read_text(path: str | os.PathLike) -> str:
    """Read one UTF-8 text file; missing, empty, binary or non-UTF-8 files, folders and FIFOs raise LexicoError."""
    path = regular_file(path, "text file")
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise LexicoError(f"{path} looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LexicoError(f"{path} is not UTF-8 text (invalid byte at offset {err.start})") from None
    if not text.strip():
        raise LexicoError(f"{path} is empty")
    return text


def read_corpus(paths: list[str | os.PathLike]) -> list[str]:
    """Read every corpus file (a folder contributes its ``*.txt`` files, sorted)."""
    if not paths:
        raise LexicoError("no corpus given: pass --corpus FILE [FILE ...]")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(path.rglob("*.txt"))
            if not found:
                raise LexicoError(f"corpus folder {path} holds no .txt files")
            files.extend(found)
        else:
            files.append(path)
    return [read_text(f) for f in files]
