"""Where lexico-chat keeps what it writes (its user cache folder) and where the Hugging Face cache is.

Both follow the usual environment variables, so tests can point them at temporary folders:
``$LEXICO_CHAT_HOME`` (else ``$XDG_CACHE_HOME/lexico-chat``, else ``~/.cache/lexico-chat``), and for the hub
cache ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (``~/.cache``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["hf_hub_cache", "user_cache_folder"]


def _xdg_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()


def user_cache_folder() -> Path:
    """lexico-chat's own cache: converted models (``models/``) and trained dictionaries (``dictionaries/``)."""
    home = os.environ.get("LEXICO_CHAT_HOME")
    return Path(home).expanduser() if home else _xdg_cache() / "lexico-chat"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder (it holds ``models--ORG--NAME`` folders)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else _xdg_cache() / "huggingface") / "hub"
