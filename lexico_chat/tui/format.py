"""Human-readable text for the status bar, the stats screen and error notifications (pure functions, no
Textual)."""

from __future__ import annotations

from lexico_chat.engine.types import SessionStats
from lexico_chat.errors import LexicoError
from lexico_chat.units import human_bytes

__all__ = ["describe", "human_bytes", "status_segments", "pack_segments"]


def memory_text(stats: SessionStats) -> str:
    """GPU memory used/total from NVML when known, else "CPU" and the process RSS."""
    if stats.gpu_used_bytes is not None:
        total = f" / {human_bytes(stats.gpu_total_bytes)}" if stats.gpu_total_bytes is not None else ""
        return f"GPU {human_bytes(stats.gpu_used_bytes)}{total}"
    return f"CPU RSS {human_bytes(stats.rss_bytes)}"


def ratio_text(stats: SessionStats) -> str:
    """``12.5% of fp16 · 8.0× smaller``; ``—`` while the cache is empty (no ratio to show)."""
    if stats.kv_fraction is None:
        return "—"
    return f"{stats.kv_fraction:.1%} of fp16 · {stats.times_smaller:.1f}× smaller"


def model_text(stats: SessionStats) -> str:
    """Model, device and cache settings, e.g. ``SmolLM2-135M-Instruct · cpu · lexico s=8 N=4096``."""
    cache = stats.cache
    if stats.sparsity is not None:
        cache += f" s={stats.sparsity_label or stats.sparsity}"
    if stats.atoms is not None:
        cache += f" N={stats.atoms}"
    return f"{stats.model_id} · {stats.device} · {cache}"


def status_segments(stats: SessionStats) -> list[str]:
    """The status bar's figures, one unbreakable segment each."""
    return [
        memory_text(stats),
        f"KV {human_bytes(stats.kv_bytes)} (fp16 {human_bytes(stats.fp16_bytes)})",
        ratio_text(stats),
        f"{stats.tokens_compressed:,} compressed + {stats.tokens_buffer:,} buffer tok",
        f"prefill {stats.prefill_tps:.1f} tok/s · decode {stats.decode_tps:.1f} tok/s",
        model_text(stats),
    ]


def pack_segments(segments: list[str], width: int, separator: str = " │ ") -> list[str]:
    """Greedily join ``segments`` into lines of at most ``width`` cells, breaking only between segments."""
    lines: list[str] = []
    for segment in segments:
        if lines and len(lines[-1]) + len(separator) + len(segment) <= width:
            lines[-1] += separator + segment
        else:
            lines.append(segment)
    return lines


def describe(err: Exception) -> str:
    """One line for a notification: a LexicoError's own message, else the exception type and message."""
    return str(err) if isinstance(err, LexicoError) else f"{type(err).__name__}: {err}"
