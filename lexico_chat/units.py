"""Bytes and durations as people read them (pure functions, no imports of the project: any layer may use them)."""

from __future__ import annotations

__all__ = ["duration", "human_bytes"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: int | float | None) -> str:
    """``1536`` → ``"1.5 KiB"`` (binary units, one decimal; whole bytes below 1 KiB; "n/a" for None)."""
    if n is None:
        return "n/a"
    value = float(n)
    for unit in _UNITS[:-1]:
        if abs(value) < 1024:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"


def duration(seconds: float) -> str:
    """``45 s``, ``4 min``, ``1 h 20 min`` (at least ``1 s``)."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"
