"""A user's turn in the chat log: plain text, shown as typed (no markup); very long turns are elided."""

from __future__ import annotations

from textual.widgets import Static

MAX_LINES = 24
MAX_CHARS = 4000


def elide(text: str, max_lines: int = MAX_LINES, max_chars: int = MAX_CHARS) -> str:
    """Head and tail of a long text (e.g. a whole document in a resumed transcript) around a "more" line."""
    lines = text.splitlines()
    if len(lines) > max_lines:
        half = max_lines // 2
        lines = [*lines[:half], f"… {len(lines) - 2 * half:,} more lines …", *lines[-half:]]
        text = "\n".join(lines)
    if len(text) > max_chars:
        half = max_chars // 2
        text = f"{text[:half]}\n… {len(text) - 2 * half:,} more characters …\n{text[-half:]}"
    return text


class UserMessage(Static):
    """What the user sent; ``text`` is kept verbatim, the display elides very long turns."""

    def __init__(self, text: str) -> None:
        super().__init__(elide(text), markup=False)
        self.text = text
