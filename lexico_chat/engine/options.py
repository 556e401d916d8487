"""Settings of a chat session (what the CLI flags map to)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lexico_chat.config import CacheConfig
from lexico_chat.errors import LexicoError

__all__ = ["SessionOptions", "DEFAULT_PREFILL_CHUNK"]

DEFAULT_PREFILL_CHUNK = 512


@dataclass(frozen=True)
class SessionOptions:
    """Model, dictionary and cache settings of a ChatSession.

    model : None (embedded default), a local folder, a .gguf file or a hub id.
    device : "auto" (CUDA GPU(s), else mps, else CPU), "cpu", "cuda", "cuda:N" or "mps".
    dictionary : explicit dictionary file, or None (looked up for the model and ``cache.atoms``).
    cache : the KV-cache settings (kind, sparsity, atoms, buffer, window, storage dtypes).
    prefill_chunk : tokens per forward call while prefilling.
    system : system prompt, or None.
    """

    model: str | None = None
    device: str = "auto"
    dictionary: str | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    system: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cache, CacheConfig):
            raise LexicoError(f"`cache` must be a CacheConfig, got {type(self.cache).__name__}")
        if isinstance(self.prefill_chunk, bool) or not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 1:
            raise LexicoError(f"`prefill_chunk` must be an integer >= 1, got {self.prefill_chunk!r}")
