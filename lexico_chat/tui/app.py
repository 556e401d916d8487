"""The chat app: builds the ``ChatEngine`` with a factory in a worker thread (the model takes seconds to load)
and hands it to the main screen; ``run_tui`` is the entry point the CLI calls. Never imports torch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import App
from textual.logging import TextualHandler
from textual.message import Message

from lexico_chat.engine.types import ChatEngine, SamplingConfig
from lexico_chat.errors import LexicoError
from lexico_chat.tui import commands
from lexico_chat.tui.screens.chat import ChatScreen
from lexico_chat.tui.screens.load_error import LoadErrorDialog

__all__ = ["LexicoApp", "run_tui"]

logger = logging.getLogger(__name__)

EngineFactory = Callable[[], ChatEngine]


class LexicoApp(App[int]):
    """Chat with the engine ``engine_factory()`` returns. A failing factory (e.g. no dictionary for the model)
    shows a dialog, then the app exits with code 2. ``doc`` (and ``question``) are asked about once the engine
    is ready."""

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
    ) -> None:
        super().__init__()
        self.engine_factory = engine_factory
        self.doc, self.question = doc, question
        self.title, self.sub_title = title, subtitle
        self.chat = ChatScreen(sampling, stats_interval)

    @property
    def engine(self) -> ChatEngine | None:
        return self.chat.engine

    def get_default_screen(self) -> ChatScreen:
        return self.chat

    def on_mount(self) -> None:
        self._load_engine()

    @work(thread=True, exit_on_error=False)
    def _load_engine(self) -> None:
        try:
            self.post_message(self.EngineLoaded(self.engine_factory()))
        except Exception as err:  # any failure ends in the dialog, never in a traceback over the UI
            logger.debug("engine factory failed", exc_info=True)
            self.post_message(self.EngineFailed(err))

    async def on_lexico_app_engine_loaded(self, event: EngineLoaded) -> None:
        await self.chat.attach(event.engine)
        if self.doc is not None:
            try:
                await self.chat.ask_document(self.doc, self.question or commands.DEFAULT_QUESTION)
            except LexicoError as err:
                self.notify(str(err), severity="error", markup=False)

    def on_lexico_app_engine_failed(self, event: EngineFailed) -> None:
        self.chat.show_load_failure()
        self.push_screen(LoadErrorDialog(event.error), callback=lambda _: self.exit(return_code=2))

    async def action_quit(self) -> None:
        self.chat.action_cancel_reply()  # a generating worker thread would otherwise hold the exit
        self.exit(return_code=2 if self.chat.load_failed else 0)


def run_tui(
    engine_factory: EngineFactory,
    doc: str | None = None,
    question: str | None = None,
    sampling: SamplingConfig | None = None,
    title: str = "lexico-chat",
    subtitle: str = "",
) -> int:
    """Run the chat app until the user quits; returns the exit code (2 when the engine could not start).

    ``engine_factory`` builds the engine (e.g. loads the model); it runs in a worker thread behind a loading
    indicator, and a LexicoError it raises is shown in a dialog (with the train command for a missing
    dictionary). ``doc``/``question``: a document to ask about at start. ``title``/``subtitle``: header text.
    """
    app = LexicoApp(engine_factory, doc=doc, question=question, sampling=sampling, title=title, subtitle=subtitle)
    root = logging.getLogger()
    handlers, root.handlers = root.handlers, [TextualHandler()]  # a StreamHandler would write over the screen
    try:
        app.run()
    finally:
        root.handlers = handlers
    return app.return_code or 0
