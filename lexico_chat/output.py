"""How commands print their result on stdout: one JSON object, ``key: value`` lines, or a table."""

from __future__ import annotations

import json

__all__ = ["emit", "table"]


def emit(result: dict, as_json: bool) -> None:
    """Print a command's result: one JSON object, or ``key: value`` lines."""
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, list | dict) else value}")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Rows as left-aligned columns under ``headers`` (the last column is not padded)."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)
