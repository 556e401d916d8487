"""``ServerConfig``: the settings of ``lexico-chat serve`` that are not the engine's (network, queue,
memory budget, saved sessions, request defaults)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lexico_chat.errors import LexicoError

__all__ = ["API_KEY_ENV", "DEFAULT_CACHE_MEMORY", "ServerConfig", "default_session_dir", "parse_size"]

API_KEY_ENV = "LEXICO_CHAT_API_KEY"
DEFAULT_CACHE_MEMORY = 2 * 1024**3
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30})
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from "2GiB", "512MiB", "1.5GB", "1000000" (KiB/MiB/GiB and K/M/G are powers of 1024,
    KB/MB/GB powers of 1000)."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise LexicoError(f"--cache-memory must be a size like 2GiB, 512MiB or 1000000 (bytes), got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def default_session_dir() -> Path:
    """``$LEXICO_CHAT_HOME/sessions``, else ``~/.cache/lexico-chat/sessions``."""
    home = os.environ.get("LEXICO_CHAT_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "lexico-chat") / "sessions"


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server.

    host, port : where to listen (loopback by default; port 0 picks a free one).
    api_key : when set, every endpoint requires ``Authorization: Bearer <api_key>``.
    queue : requests that may wait while one is generated; one more gets 503 with Retry-After.
    cache_memory : bytes the conversations' caches may hold together (exact bytes allocated); the least
        recently used conversations are dropped after a turn that goes over.
    session_dir : folder of saved conversations (``POST /v1/lexico/sessions/{id}``).
    system : system prompt put before the messages of a request that sends none (None: no system message).
    max_tokens, temperature, top_p, seed : what a request that does not say gets.
    retry_after : seconds a 503 tells the client to wait.
    max_body_bytes : larger request bodies get 413.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    queue: int = 8
    cache_memory: int = DEFAULT_CACHE_MEMORY
    session_dir: Path = field(default_factory=default_session_dir)
    system: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    retry_after: int = 1
    max_body_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise LexicoError(f"--port must be in [0, 65535], got {self.port}")
        if self.queue < 0:
            raise LexicoError(f"--queue must be >= 0, got {self.queue}")
        if self.cache_memory < 1:
            raise LexicoError(f"--cache-memory must be at least 1 byte, got {self.cache_memory}")
        if self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise LexicoError(
                f"need --max-new-tokens >= 1, --temperature >= 0, 0 < --top-p <= 1; got "
                f"{self.max_tokens}, {self.temperature}, {self.top_p}"
            )
        if self.api_key is not None and not self.api_key.strip():
            raise LexicoError("--api-key must not be empty")
        object.__setattr__(self, "session_dir", Path(self.session_dir).expanduser())
