"""Settings of a chat session (what the CLI flags map to)."""

from __future__ import annotations

from dataclasses import dataclass

from lexico_chat.errors import LexicoError

__all__ = ["SessionOptions", "CACHE_KINDS"]

CACHE_KINDS = ("lexico", "full")


@dataclass(frozen=True)
class SessionOptions:
    """Model, dictionary and cache settings of a ChatSession.

    model : None (embedded default), a local folder, a .gguf file or a hub id.
    cache : "lexico" (compressed) or "full" (transformers' DynamicCache, for comparison).
    sparsity, atoms : Lexico s and dictionary size N; dictionary: explicit file or None (looked up).
    buffer, window : recent full-precision tokens and tokens compressed at a time.
    prefill_chunk : tokens per forward call while prefilling.
    """

    model: str | None = None
    device: str = "cpu"
    dictionary: str | None = None
    cache: str = "lexico"
    sparsity: int = 8
    atoms: int = 4096
    buffer: int = 128
    window: int = 32
    prefill_chunk: int = 512
    system: str | None = None

    def __post_init__(self) -> None:
        if self.cache not in CACHE_KINDS:
            raise LexicoError(f"--cache must be one of {list(CACHE_KINDS)}, got {self.cache!r}")
        if self.sparsity < 1:
            raise LexicoError(f"--sparsity must be at least 1, got {self.sparsity}")
        if self.buffer < 0 or self.window < 1 or self.prefill_chunk < 1:
            raise LexicoError(f"--buffer must be >= 0 and --window >= 1, got {self.buffer} and {self.window}")
