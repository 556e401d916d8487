"""An app note in the chat log (help, "document loaded", ...): Markdown that is not part of the transcript."""

from __future__ import annotations

from textual.widgets import Markdown


class Note(Markdown):
    """A message from the app itself, not from the model."""
