"""An assistant reply in the chat log, streamed as Markdown while the model decodes."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownStream


class AssistantMessage(Markdown):
    """A reply: a worker thread posts ``TokenReceived`` per text delta, then ``ReplyFinished`` once.

    Deltas go through a :class:`MarkdownStream`, which batches them when the model outpaces rendering;
    on ``ReplyFinished`` the stream is flushed and the whole reply re-rendered once, so a code block split
    across deltas ends up as one intact fence. ``ReplyFinished`` then bubbles up to the screen.
    """

    @dataclass
    class TokenReceived(Message, bubble=False):
        """One text delta of the reply."""

        text: str

    @dataclass
    class ReplyFinished(Message):
        """The reply ended: normally, stopped by the user (``cancelled``), or on an ``error`` message."""

        cancelled: bool = False
        error: str | None = None

    def __init__(self, text: str = "", *, streaming: bool = True) -> None:
        """``streaming=False`` shows a finished reply (``text``), e.g. from a resumed transcript."""
        super().__init__(text)
        self.text = text
        self.finished = not streaming
        self._stream: MarkdownStream | None = None

    def on_mount(self) -> None:
        if not self.finished:
            self._stream = Markdown.get_stream(self)

    async def on_assistant_message_token_received(self, event: TokenReceived) -> None:
        self.text += event.text
        if self._stream is not None:
            await self._stream.write(event.text)

    async def on_assistant_message_reply_finished(self, event: ReplyFinished) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        await self.update(self.text)
        self.finished = True
        self.set_class(event.cancelled, "-cancelled")
        self.set_class(event.error is not None, "-error")
        if event.cancelled:
            self.border_subtitle = "stopped"
        if event.error is not None and not self.text:
            self.call_after_refresh(self.remove)  # after the event has bubbled up to the app
