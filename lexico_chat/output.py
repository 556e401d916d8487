"""How commands print their result on stdout: one JSON object, or ``key: value`` lines."""

from __future__ import annotations

import json

__all__ = ["emit"]


def emit(result: dict, as_json: bool) -> None:
    """Print a command's result: one JSON object, or ``key: value`` lines."""
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {json.dumps(value) if isinstance(value, list | dict) else value}")
