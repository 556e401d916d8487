"""The multi-line prompt: Enter sends, Ctrl+J (or Shift+Enter) inserts a new line, Up/Down recall history."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    """Enter posts ``Submitted``. Up on the first visual row / Down on the last one step through earlier
    inputs (the unsent draft comes back after the newest). Terminals send Ctrl+J for a new line; Shift+Enter
    only arrives where the terminal reports modified Enter keys (kitty keyboard protocol)."""

    BINDINGS = [Binding("ctrl+j,shift+enter", "newline", "New line", key_display="^j")]

    @dataclass
    class Submitted(Message):
        """The user pressed Enter on non-blank text."""

        text: str

    def __init__(self, *, id: str | None = None) -> None:
        placeholder = "Message · Enter sends · ^j new line · /help"
        super().__init__(id=id, soft_wrap=True, show_line_numbers=False, placeholder=placeholder)
        self.sent: list[str] = []
        self._recall = 0  # index into history; len(history) means the draft
        self._draft = ""

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.submit()
            return
        await super()._on_key(event)

    def submit(self) -> None:
        text = self.text
        if not text.strip():
            return
        if not self.sent or self.sent[-1] != text:
            self.sent.append(text)
        self._recall, self._draft = len(self.sent), ""
        self.clear()
        self.post_message(self.Submitted(text))

    def action_newline(self) -> None:
        start, end = self.selection
        self.replace("\n", start, end, maintain_selection_offset=False)

    def action_cursor_up(self, select: bool = False) -> None:
        if not select and self._recall > 0 and self.navigator.is_first_wrapped_line(self.cursor_location):
            if self._recall == len(self.sent):
                self._draft = self.text
            self._recall -= 1
            self._show(self.sent[self._recall])
            return
        super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        at_last_row = self.navigator.is_last_wrapped_line(self.cursor_location)
        if not select and self._recall < len(self.sent) and at_last_row:
            self._recall += 1
            self._show(self.sent[self._recall] if self._recall < len(self.sent) else self._draft)
            return
        super().action_cursor_down(select)

    def _show(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)
