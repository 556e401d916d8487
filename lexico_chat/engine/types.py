"""The chat engine's public data types and interface (no torch import: the TUI depends on this only)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["ChatEngine", "IngestProgress", "LayerStats", "Message", "SamplingConfig", "SessionStats", "TurnUsage"]


@dataclass
class Message:
    """One transcript entry; role is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_p in (0, 1]; seed makes sampling reproducible."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 256


@dataclass(frozen=True)
class TurnUsage:
    """Token counts of the last turn: the prompt as fed (cached + new), the part reused from the cache,
    the reply's tokens, and why the reply ended ("stop": end of turn, "length": token limit or context
    full, "cancelled": ``cancel()``)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class IngestProgress:
    """Document prefill progress: tokens done of total, and throughput so far."""

    done: int
    total: int
    tokens_per_s: float


@dataclass(frozen=True)
class LayerStats:
    """Bytes one layer holds: compressed codes, full-precision buffer, and the fp16 equivalent."""

    layer: int
    compressed_bytes: int
    buffer_bytes: int
    fp16_bytes: int
    tokens_compressed: int
    tokens_buffer: int


@dataclass(frozen=True)
class SessionStats:
    """Every figure the status bar and --json show; bytes are of tensors actually held."""

    kv_bytes: int  # compressed + buffer
    compressed_bytes: int
    buffer_bytes: int
    fp16_bytes: int  # the same tokens in an fp16 cache
    kv_fraction: float  # kv_bytes / fp16_bytes (1.0 when empty)
    tokens_compressed: int
    tokens_buffer: int
    context_tokens: int
    max_positions: int
    prefill_tps: float  # last turn
    decode_tps: float  # last turn
    rss_bytes: int
    gpu_used_bytes: int | None  # NVML, None without an NVIDIA GPU
    gpu_total_bytes: int | None
    torch_allocated_bytes: int | None  # CUDA allocator, None on CPU
    dictionary_bytes: int
    model_id: str
    device: str
    cache: str  # "lexico" or "full"
    sparsity: int | None
    atoms: int | None
    layers: tuple[LayerStats, ...] = field(default_factory=tuple)
    allocated_bytes: int = 0  # capacity actually reserved by the cache (>= kv_bytes: storage grows geometrically)

    @property
    def times_smaller(self) -> float:
        return 1.0 / self.kv_fraction if self.kv_fraction > 0 else float("inf")


class ChatEngine(Protocol):
    """What the TUI and the headless CLI use. Calls that fail for a user reason raise LexicoError
    and leave the session usable; methods that generate are not re-entrant (one at a time)."""

    transcript: list[Message]

    def send(self, text: str, sampling: SamplingConfig | None = None) -> Iterator[str]:
        """Add a user turn and stream the reply as text deltas; the reply joins the transcript."""

    def ask_document(
        self,
        path: str,
        question: str,
        sampling: SamplingConfig | None = None,
        progress: Callable[[IngestProgress], None] | None = None,
    ) -> Iterator[str]:
        """Read a UTF-8 document, prefill it with the question in chunks (progress callback), stream the reply."""

    def cancel(self) -> None:
        """Ask a running reply to stop; it stops within one token, keeping the partial reply."""

    def clear(self) -> None:
        """Forget the conversation (keeps the system prompt)."""

    def set_system(self, text: str) -> None:
        """Replace the system prompt; starts a new conversation."""

    def save(self, path: str) -> str:
        """Write the session atomically; returns the path written."""

    def resume(self, path: str) -> None:
        """Replace this session's state with a saved one (checked: version, model, dictionary)."""

    def stats(self) -> SessionStats:
        """Current figures (cheap: called at least once a second)."""
