"""The chat app: builds the ``ChatEngine`` with a factory in a worker thread (the model takes seconds to load,
and the status bar says what it is doing) and hands it to the main screen; a missing dictionary that can be
trained now goes through the dialog's "Train now" and the training screen first. ``run_tui`` is the entry
point the CLI calls. Never imports torch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import App
from textual.logging import TextualHandler
from textual.message import Message

from lexico_chat.engine.startup import LoadingStatus
from lexico_chat.engine.types import ChatEngine, SamplingConfig
from lexico_chat.errors import LexicoError
from lexico_chat.tui import commands
from lexico_chat.tui.screens.chat import ChatScreen
from lexico_chat.tui.screens.load_error import TRAIN, LoadErrorDialog
from lexico_chat.tui.screens.training import TrainingScreen

__all__ = ["LexicoApp", "run_tui"]

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], ChatEngine]


class LexicoApp(App[int]):
    """Chat with the engine ``engine_factory()`` returns. A failing factory (e.g. no dictionary for the model)
    shows a dialog, then the app exits with code 2, unless the error offers training and the user takes it:
    then the engine comes from the training screen. ``doc`` (and ``question``) are asked about once the engine
    is ready; ``loading`` is the status the factory reports to (shown until then)."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere find it too

    @dataclass
    class EngineLoaded(Message):
        engine: ChatEngine

    @dataclass
    class EngineFailed(Message):
        error: Exception  # the dialog shows a MissingDictionaryError's command

    def __init__(
        self,
        engine_factory: EngineFactory,
        *,
        doc: str | None = None,
        question: str | None = None,
        sampling: SamplingConfig | None = None,
        title: str = "lexico-chat",
        subtitle: str = "",
        stats_interval: float = 1.0,
        loading: LoadingStatus | None = None,
    ) -> None:
        super().__init__()
        self.engine_factory = engine_factory
        self.doc, self.question = doc, question
        self.title, self.sub_title = title, subtitle
        self.chat = ChatScreen(sampling, stats_interval)
        self.loading = loading or LoadingStatus()
        self.training: TrainingScreen | None = None

    @property
    def engine(self) -> ChatEngine | None:
        return self.chat.engine

    def get_default_screen(self) -> ChatScreen:
        return self.chat

    def on_mount(self) -> None:
        self._load_engine()
        self._loading_timer = self.set_interval(0.5, self._show_loading)

    def _show_loading(self) -> None:
        if self.engine is None and not self.chat.load_failed:
            self.chat.show_loading(self.loading.line())
        else:
            self._loading_timer.stop()

    @work(thread=True, exit_on_error=False)
    def _load_engine(self) -> None:
        try:
            self.post_message(self.EngineLoaded(self.engine_factory()))
        except Exception as err:  # any failure ends in the dialog, never in a traceback over the UI
            logger.debug("engine factory failed", exc_info=True)
            self.post_message(self.EngineFailed(err))

    async def on_lexico_app_engine_loaded(self, event: EngineLoaded) -> None:
        await self._start(event.engine)

    async def _start(self, engine: ChatEngine, note: str | None = None) -> None:
        await self.chat.attach(engine)
        if note is not None:
            await self.chat.add_note(note)
        if self.doc is not None:
            try:
                await self.chat.ask_document(self.doc, self.question or commands.DEFAULT_QUESTION)
            except LexicoError as err:
                self.notify(str(err), severity="error", markup=False)
        await self.chat.send_queued()

    def on_lexico_app_engine_failed(self, event: EngineFailed) -> None:
        self.chat.show_load_failure()
        self._show_error(event.error)

    def _show_error(self, error: Exception) -> None:
        dialog = LoadErrorDialog(error)
        self.push_screen(dialog, callback=lambda choice: self._dialog_closed(dialog, choice))

    def _dialog_closed(self, dialog: LoadErrorDialog, choice: str | None) -> None:
        if choice != TRAIN:
            self.exit(return_code=2)
            return
        self.training = TrainingScreen(dialog.offer)
        self.chat.show_loading("training a dictionary…")
        self.push_screen(self.training, callback=lambda result: self._trained(dialog.error, result))

    async def _trained(self, error: Exception, result: object) -> None:
        offer, self.training = self.training.offer, None
        if result is None:  # cancelled: offer it again (it resumes from the layers kept)
            self.notify("Training cancelled; the layers fitted so far are kept", markup=False)
            self._show_error(error)
        elif isinstance(result, Exception):
            self.chat.show_load_failure()
            self.push_screen(LoadErrorDialog(result), callback=lambda _: self.exit(return_code=2))
        else:
            await self._start(result, note=f"New dictionary for {offer.model_id}: {offer.result}")

    async def action_quit(self) -> None:
        self.chat.action_cancel_reply()  # a generating worker thread would otherwise hold the exit
        if self.training is not None:
            self.training.cancel.set()  # as would a training one: it stops at its next step
        self.exit(return_code=2 if self.chat.load_failed else 0)


def run_tui(
    engine_factory: EngineFactory,
    doc: str | None = None,
    question: str | None = None,
    sampling: SamplingConfig | None = None,
    title: str = "lexico-chat",
    subtitle: str = "",
    loading: LoadingStatus | None = None,
) -> int:
    """Run the chat app until the user quits; returns the exit code (2 when the engine could not start).

    ``engine_factory`` builds the engine (e.g. loads the model); it runs in a worker thread behind a loading
    indicator and what it reports to ``loading``, and a LexicoError it raises is shown in a dialog (with the
    train command for a missing dictionary, and "Train now" when the error carries an offer). ``doc``/
    ``question``: a document to ask about at start. ``title``/``subtitle``: header text.
    """
    app = LexicoApp(
        engine_factory, doc=doc, question=question, sampling=sampling, title=title, subtitle=subtitle, loading=loading
    )
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, [TextualHandler()]  # a StreamHandler would write over the screen
    try:
        app.run()
    finally:
        root.handlers = handlers
    return app.return_code or 0
