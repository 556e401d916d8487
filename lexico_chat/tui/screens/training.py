"""First-run dictionary training behind a progress bar: the offer's ``train`` runs in a worker thread and posts
its progress; Esc or Cancel stops it at the next step (the layers fitted so far stay checkpointed, so "Train
now" resumes). Dismissed with the chat engine when done, None when cancelled, or the exception it raised."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, ProgressBar, Static

from lexico_chat.engine.startup import TrainingCancelled, TrainingOffer, TrainingProgress
from lexico_chat.units import duration

logger = logging.getLogger(__name__)

_STEPS = 1000  # the bar counts tenths of a percent


class TrainingScreen(ModalScreen[object]):
    """Runs ``offer.train`` once; ``cancel`` is the event the worker checks."""

    BINDINGS = [Binding("escape", "cancel", "Cancel training")]

    @dataclass
    class Advanced(Message, bubble=False):
        progress: TrainingProgress

    @dataclass
    class Finished(Message, bubble=False):
        result: object  # a ChatEngine, None (cancelled) or the exception

    def __init__(self, offer: TrainingOffer) -> None:
        super().__init__()
        self.offer = offer
        self.cancel = threading.Event()
        self.last: TrainingProgress | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="training-panel") as panel:
            panel.border_title = f"Training a dictionary for {self.offer.model_id}"
            yield Static(self.offer.summary, id="training-summary", markup=False)
            yield ProgressBar(total=_STEPS, show_eta=False, id="training-bar")
            yield Static("starting…", id="training-stage", markup=False)
            yield Button("Cancel", id="cancel-training", variant="warning")

    def on_mount(self) -> None:
        self._train()

    @work(thread=True, exit_on_error=False)
    def _train(self) -> None:
        try:
            result = self.offer.train(lambda progress: self.post_message(self.Advanced(progress)), self.cancel)
        except TrainingCancelled:
            result = None
        except Exception as err:  # shown by the app's error dialog, never as a traceback over the UI
            logger.debug("training failed", exc_info=True)
            result = err
        self.post_message(self.Finished(result))

    def on_training_screen_advanced(self, event: Advanced) -> None:
        self.last = event.progress
        self.query_one(ProgressBar).update(progress=round(event.progress.fraction * _STEPS))
        if not self.cancel.is_set():
            self.query_one("#training-stage", Static).update(stage_line(event.progress))

    def on_training_screen_finished(self, event: Finished) -> None:
        self.dismiss(event.result)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_cancel()

    def action_cancel(self) -> None:
        self.cancel.set()
        self.query_one("#cancel-training", Button).disabled = True
        self.query_one("#training-stage", Static).update("cancelling after this step…")


def stage_line(progress: TrainingProgress) -> str:
    """``fitting layer 3 keys, error 0.140 (round 2 of 6) · 42% · about 3 min left``."""
    left = "" if progress.eta_s is None else f" · about {duration(progress.eta_s)} left"
    return f"{progress.stage} · {progress.fraction:.0%}{left}"
