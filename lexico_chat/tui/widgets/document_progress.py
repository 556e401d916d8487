"""Progress of a document being read into the cache (/load): a label and a bar, hidden when idle."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Label, ProgressBar

from lexico_chat.engine.types import IngestProgress


class DocumentProgress(Horizontal):
    """``start(name)`` shows it; the ingest worker posts ``Advanced`` per prefill chunk; ``finish()`` hides it."""

    @dataclass
    class Advanced(Message, bubble=False):
        """The engine prefilled another chunk of the document."""

        progress: IngestProgress

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.document = ""

    def compose(self) -> ComposeResult:
        yield Label(id="document-label", markup=False)
        yield ProgressBar(show_eta=False, id="document-bar")

    def start(self, document: str) -> None:
        self.document = document
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one(Label).update(f"Reading {document}…")
        self.display = True

    def finish(self) -> None:
        self.display = False

    def on_document_progress_advanced(self, event: Advanced) -> None:
        done, total, speed = event.progress.done, event.progress.total, event.progress.tokens_per_s
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one(Label).update(f"Reading {self.document}: {done:,} / {total:,} tokens · {speed:.0f} tok/s")
