"""The chat engine's public data types and interface (no torch import: the TUI depends on this only)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from lexico_chat.memory import LayerMemory, Memory

__all__ = ["ChatEngine", "IngestProgress", "Message", "SamplingConfig", "SessionStats", "TurnUsage"]


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
class SessionStats:
    """Every figure the status bar and --json show. The cache's bytes are its ``Memory`` (tensors actually
    held, counted once in ``lexico_chat.memory``); the properties below read it, nothing recounts."""

    memory: Memory
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
    sparsity: int | None  # --sparsity; None for a full cache
    atoms: int | None
    sparsity_label: str | None = None  # "8", or "k6/v10" when keys and values differ (what the UI shows)

    @property
    def kv_bytes(self) -> int:
        """Compressed codes + rotary table + full-precision tokens."""
        return self.memory.kv_bytes

    @property
    def compressed_bytes(self) -> int:
        """Codes, with a pre-RoPE cache's rotary table (part of what stands for compressed tokens)."""
        return self.memory.compressed_bytes + self.memory.rope_bytes

    @property
    def buffer_bytes(self) -> int:
        return self.memory.buffer_bytes

    @property
    def fp16_bytes(self) -> int:
        """What the same model's full cache would hold for these tokens in fp16."""
        return self.memory.fp16_bytes

    @property
    def allocated_bytes(self) -> int:
        """Capacity the cache reserved (>= kv_bytes: storage grows geometrically)."""
        return self.memory.allocated_bytes

    @property
    def kv_fraction(self) -> float | None:
        """kv_bytes / fp16_bytes; None for an empty cache (there is no ratio to show)."""
        return self.memory.kv_fraction

    @property
    def tokens_compressed(self) -> int:
        return self.memory.compressed_tokens

    @property
    def tokens_buffer(self) -> int:
        return self.memory.buffer_tokens

    @property
    def layers(self) -> tuple[LayerMemory, ...]:
        return self.memory.layers

    FIGURES = ("kv_bytes", "compressed_bytes", "buffer_bytes", "fp16_bytes", "allocated_bytes", "kv_fraction",
               "tokens_compressed", "tokens_buffer")  # fmt: skip

    def to_dict(self, layers: bool = False) -> dict:
        """Every figure as a flat JSON-able dict (the cache totals included; per-layer figures with ``layers``)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "memory"}
        data.update({name: getattr(self, name) for name in self.FIGURES})
        if layers:
            data["layers"] = [dataclasses.asdict(layer) for layer in self.layers]
        return data

    @property
    def times_smaller(self) -> float | None:
        fraction = self.kv_fraction
        if fraction is None:
            return None
        return 1.0 / fraction if fraction > 0 else float("inf")


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
