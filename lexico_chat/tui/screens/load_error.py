"""Shown when the engine cannot start: a missing dictionary (with the command that trains one, and "Train now"
where the model is loaded and training can start at once) or another load error. Without an engine the app
has nothing to run, so closing the dialog any other way quits."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from lexico_chat.errors import MissingDictionaryError
from lexico_chat.tui.format import describe

TRAIN = "train"  # what the dialog returns when the user chose "Train now"


class LoadErrorDialog(ModalScreen[str | None]):
    """The engine factory raised ``error``; Quit, Esc or q dismisses it with None (the app then exits).

    A MissingDictionaryError also shows its ``command``, with a button that copies it; when it carries a
    training ``offer``, the offer's summary (settings, estimated time on this device, disk) and "Train now",
    which dismisses the dialog with ``TRAIN``."""

    BINDINGS = [Binding("escape,q", "dismiss", "Quit")]

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.message = describe(error)
        missing = isinstance(error, MissingDictionaryError)
        self.command = error.command if missing else None
        self.offer = error.offer if missing else None

    def compose(self) -> ComposeResult:
        with Vertical(id="load-error-panel") as panel:
            if self.command is not None:
                panel.border_title = "No dictionary for this model"
                yield Static(self.message, id="load-error-message", markup=False)
                if self.offer is not None:
                    yield Static("Train one now:", markup=False)
                    yield Static(self.offer.summary, id="train-summary", markup=False)
                    yield Static("or with this command (then start lexico-chat again):", markup=False)
                else:
                    yield Static("Train one with (then start lexico-chat again):", markup=False)
                yield Static(self.command, id="train-command", markup=False)
            else:
                panel.border_title = "Could not start the model"
                yield Static(self.message, id="load-error-message", markup=False)
            with Horizontal(id="load-error-buttons"):
                if self.offer is not None:
                    done = self.offer.layers_done
                    yield Button("Resume training" if done else "Train now", id="train-now", variant="success")
                if self.command is not None:
                    yield Button("Copy command", id="copy-command", variant="primary")
                yield Button("Quit", id="quit", variant="error")

    def on_mount(self) -> None:
        self.query_one("#train-now" if self.offer is not None else "#quit", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "copy-command" and self.command is not None:
            self.app.copy_to_clipboard(self.command)
            self.notify("Command copied to the clipboard")
        else:
            self.dismiss(TRAIN if event.button.id == "train-now" else None)
