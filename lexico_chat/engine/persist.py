"""Saved sessions: one safetensors file (cache codes, buffer, token ids) with JSON metadata.

The metadata holds the format version, model id, dictionary fingerprint, cache settings, transcript and a
sha256 over every tensor's bytes and the metadata itself. A file is read as untrusted input
(``lexico_chat.engine.session_file``): all of it is checked before anything is loaded into the session.
Nothing is ever unpickled. Writes are atomic (``lexico_chat.atomic``): a failed save raises ``SaveError``
and leaves an earlier file intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from lexico_chat.atomic import write_safetensors
from lexico_chat.engine.cache_state import export_cache, import_cache
from lexico_chat.engine.session_file import (
    META_KEY,
    SESSION_FORMAT,
    digest,
    read_session_file,
    session_settings,
)
from lexico_chat.engine.session_fit import check_fits
from lexico_chat.errors import LexicoError

__all__ = ["SESSION_FORMAT", "save_session", "load_session_state", "read_session_file", "saved_cache_settings"]


def save_session(session, path: str | os.PathLike) -> Path:
    """Write ``session`` to ``path`` atomically (an interrupted or failed save leaves an earlier file intact)."""
    tensors, facts = export_cache(session.cache)
    tensors["token_ids"] = torch.tensor(session.cached_ids, dtype=torch.int64)
    meta = {
        "format": SESSION_FORMAT,
        "model_id": session.loaded.model_id,
        "settings": session_settings(session),
        "transcript": [{"role": m.role, "content": m.content} for m in session.transcript],
        "cached_text": session.cached_text,
        "layers": facts,
    }
    meta["sha256"] = digest(tensors, meta)
    return write_safetensors(path, tensors, metadata={META_KEY: json.dumps(meta)})


def load_session_state(session, path: str | os.PathLike) -> None:
    """Replace ``session``'s conversation and cache with the saved ones, after checking they fit."""
    saved = read_session_file(path)
    state = session.new_state()
    check_fits(saved, session, state.cache)
    try:
        import_cache(state.cache, saved.tensors, saved.layers, session.device)
    except RuntimeError as err:  # e.g. out of device memory
        raise LexicoError(f"{saved.path} could not be loaded into this cache ({str(err)[:200]})") from None
    state.ids, state.text = saved.token_ids, saved.cached_text
    session.restore(state, saved.transcript)


def saved_cache_settings(path: str | os.PathLike) -> dict:
    """The CacheConfig fields a session file was saved with (for flags not given on resume)."""
    settings = read_session_file(path).settings
    return {name: value for name, value in settings.items() if name != "dictionary"}
