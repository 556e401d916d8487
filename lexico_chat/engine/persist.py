"""Saved sessions: one safetensors file (cache codes, buffer, token ids) with JSON metadata.

The metadata holds the format version, model id, dictionary fingerprint, cache settings, transcript
and a sha256 over every tensor's bytes and the metadata itself, so truncation, corruption and
tampering are all caught before anything is loaded into the session. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lexico_chat.atomic import write_atomic
from lexico_chat.dictionary import model_slug
from lexico_chat.engine.cache_state import export_cache, import_cache
from lexico_chat.engine.types import Message
from lexico_chat.errors import LexicoError

__all__ = ["SESSION_FORMAT", "save_session", "load_session_state", "read_session_file", "saved_cache_settings"]

SESSION_FORMAT = 2  # 2: settings are the CacheConfig fields (format 1 had a subset under other names)
_META_KEY = "lexico_session"


def _settings(session) -> dict:
    """The cache settings a resume must match: every CacheConfig field (only the kind for a full cache)
    and the dictionary's fingerprint."""
    config = session.options.cache
    if not config.lexico:
        return {"kind": config.kind, "dictionary": None}
    return {**config.settings(), "dictionary": session.dictionary.fingerprint()}


def _digest(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_session(session, path: str | os.PathLike) -> Path:
    """Write ``session`` to ``path`` atomically (an interrupted save leaves an earlier file intact)."""
    tensors, facts = export_cache(session.cache)
    tensors["token_ids"] = torch.tensor(session.cached_ids, dtype=torch.int64)
    meta = {
        "format": SESSION_FORMAT,
        "model_id": session.loaded.model_id,
        "settings": _settings(session),
        "transcript": [{"role": m.role, "content": m.content} for m in session.transcript],
        "cached_text": session.cached_text,
        "layers": facts,
    }
    meta["sha256"] = _digest(tensors, meta)
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)}))


def read_session_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a session file, verified; any defect raises one LexicoError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LexicoError(f"session file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[_META_KEY])
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as err:  # noqa: BLE001 - every parse failure means the same to the user
        raise LexicoError(
            f"{path} is not a readable lexico-chat session (truncated or corrupt: {type(err).__name__})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != SESSION_FORMAT:
        raise LexicoError(
            f"{path} has session format {meta.get('format') if isinstance(meta, dict) else '?'}; "
            f"this version reads {SESSION_FORMAT}"
        )
    claimed = meta.pop("sha256", None)
    if claimed != _digest(tensors, meta):
        raise LexicoError(f"{path} fails its checksum: the file was modified or damaged")
    return tensors, meta


def load_session_state(session, path: str | os.PathLike) -> None:
    """Replace ``session``'s conversation and cache with the saved ones, after checking they fit."""
    tensors, meta = read_session_file(path)
    if model_slug(meta["model_id"]) != model_slug(session.loaded.model_id):
        raise LexicoError(f"{path} was saved with model {meta['model_id']}, not {session.loaded.model_id}")
    saved, mine = meta["settings"], _settings(session)
    diff = [f"{k} {saved.get(k)} (this session: {mine[k]})" for k in mine if saved.get(k) != mine[k]]
    if diff:
        what = "a different dictionary" if "dictionary" in {d.split()[0] for d in diff} else "other cache settings"
        raise LexicoError(f"{path} was saved with {what}: " + "; ".join(d[:80] for d in diff))
    state = session.new_state()
    try:
        import_cache(state.cache, tensors, meta["layers"], session.device)
    except (KeyError, ValueError, RuntimeError) as err:
        raise LexicoError(f"{path} does not fit this model's cache ({err})") from None
    state.ids, state.text = tensors["token_ids"].tolist(), meta["cached_text"]
    session.restore(state, [Message(m["role"], m["content"]) for m in meta["transcript"]])


def saved_cache_settings(path: str | os.PathLike) -> dict:
    """The CacheConfig fields a session file was saved with (for flags not given on resume)."""
    settings = read_session_file(path)[1]["settings"]
    return {name: value for name, value in settings.items() if name != "dictionary"}
