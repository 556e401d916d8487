"""Shown when the engine cannot start: a missing dictionary (with the command that trains one) or another
load error. The app has nothing to run without an engine, so closing the dialog quits."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from lexico_chat.errors import MissingDictionaryError
from lexico_chat.tui.format import describe


class LoadErrorDialog(ModalScreen[None]):
    """The engine factory raised ``error``; Quit, Esc or q dismisses it (the app then exits).

    A MissingDictionaryError also shows its ``command``, with a button that copies it."""

    BINDINGS = [Binding("escape,q", "dismiss", "Quit")]

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.message = describe(error)
        self.command = error.command if isinstance(error, MissingDictionaryError) else None

    def compose(self) -> ComposeResult:
        with Vertical(id="load-error-panel") as panel:
            if self.command is not None:
                panel.border_title = "No dictionary for this model"
                yield Static(self.message, id="load-error-message", markup=False)
                yield Static("Train one with (then start lexico-chat again):", markup=False)
                yield Static(self.command, id="train-command", markup=False)
            else:
                panel.border_title = "Could not start the model"
                yield Static(self.message, id="load-error-message", markup=False)
            with Horizontal(id="load-error-buttons"):
                if self.command is not None:
                    yield Button("Copy command", id="copy-command", variant="primary")
                yield Button("Quit", id="quit", variant="error")

    def on_mount(self) -> None:
        self.query_one("#quit", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "copy-command" and self.command is not None:
            self.app.copy_to_clipboard(self.command)
            self.notify("Command copied to the clipboard")
        else:
            self.dismiss()
