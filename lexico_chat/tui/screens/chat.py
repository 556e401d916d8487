"""The main screen: conversation, document progress, prompt and status bar, driving a ``ChatEngine``.

Model work (replies, documents, save/resume...) runs in ``@work(thread=True)`` workers that report back with
``post_message`` (thread-safe and, unlike ``call_from_thread``, harmless once the app has closed), so the UI
never waits on the model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header

from lexico_chat.engine.types import ChatEngine, IngestProgress, SamplingConfig
from lexico_chat.errors import LexicoError, SaveError
from lexico_chat.tui import commands
from lexico_chat.tui.commands import CommandLine, SlashCommandProvider
from lexico_chat.tui.format import describe
from lexico_chat.tui.screens.stats import StatsScreen
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.chat_view import ChatView
from lexico_chat.tui.widgets.document_progress import DocumentProgress
from lexico_chat.tui.widgets.prompt_input import PromptInput
from lexico_chat.tui.widgets.status_bar import StatusBar

logger = logging.getLogger(__name__)


class ChatScreen(Screen):
    """Chat once ``attach(engine)`` is called; until then the conversation shows a loading indicator and
    messages sent are queued (``send_queued`` sends them once the engine is free). Slash commands come from
    the prompt or the command palette (``SlashCommandProvider``)."""

    COMMANDS = {SlashCommandProvider}
    BINDINGS = [Binding("escape", "cancel_reply", "Stop reply")]

    @dataclass
    class CommandFinished(Message):
        """An engine command (``name`` as in /name) returned ``result`` in its worker."""

        name: str
        result: Any
        exclusive: bool

    @dataclass
    class CommandFailed(Message):
        name: str
        message: str
        exclusive: bool

    def __init__(self, sampling: SamplingConfig | None = None, stats_interval: float = 1.0) -> None:
        super().__init__()
        self.engine: ChatEngine | None = None
        self.sampling = sampling
        self.stats_interval = stats_interval
        self.replying = False  # a reply (or document) is streaming
        self.working = False  # an exclusive engine command (save, resume, ...) is running
        self._cancel_requested = False
        self.load_failed = False
        self._save_path: Path | None = None  # the target of the last /save (another is offered when it fails)
        self.queued: list[str] = []  # typed while the model was loading, sent in order once it is ready

    def compose(self) -> ComposeResult:
        yield Header(icon="≋")
        yield ChatView(id="chat")
        yield DocumentProgress(id="document")
        yield PromptInput(id="prompt")
        yield StatusBar(self.stats_interval, id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        if self.engine is None and not self.load_failed:  # the engine may come first
            self.query_one(ChatView).loading = True
            self.query_one(StatusBar).phase = "loading model…"

    async def attach(self, engine: ChatEngine) -> None:
        """Start chatting with ``engine`` (showing its transcript, if it has one)."""
        self.engine, self.load_failed = engine, False
        chat = self.query_one(ChatView)
        chat.loading = False
        status = self.query_one(StatusBar)
        status.phase = ""
        status.attach(engine)
        if engine.transcript:
            await chat.show_transcript(engine.transcript)

    async def add_note(self, markdown: str) -> None:
        await self.query_one(ChatView).add_note(markdown)

    def show_loading(self, line: str) -> None:
        """What the loading engine is doing (``LoadingStatus.line()``), and the messages waiting for it."""
        waiting = f" · {len(self.queued)} message{'s' * (len(self.queued) > 1)} queued" if self.queued else ""
        self.query_one(StatusBar).phase = line + waiting

    async def send_queued(self) -> None:
        """Send the next message typed while loading, if the engine is ready and free."""
        if self.queued and self.engine is not None and not (self.replying or self.working):
            await self.send(self.queued.pop(0))

    def show_load_failure(self) -> None:
        self.load_failed = True
        self.query_one(ChatView).loading = False
        self.query_one(StatusBar).phase = "no model"

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        if text.startswith("/"):
            await self.run_command_line(text)
        else:
            await self.send(text)

    def _idle_engine(self) -> ChatEngine:
        """The engine, when it is ready for a new call; raises LexicoError saying why not."""
        if self.engine is None:
            raise LexicoError("the model is still loading; try again in a moment")
        if self.replying or self.working:
            raise LexicoError("the model is busy with the previous request; press Esc to stop a reply")
        return self.engine

    async def send(self, text: str) -> None:
        if self.engine is None and not self.load_failed:
            self.queued.append(text)
            self.notify("The model is still loading: the message is sent once it is ready", markup=False)
            return
        try:
            engine = self._idle_engine()
        except LexicoError as err:
            self.notify(str(err), severity="error", markup=False)
            return
        await self._start_reply(text, lambda: engine.send(text, self.sampling), "generating…")

    async def ask_document(self, path: str, question: str) -> None:
        engine = self._idle_engine()
        document, status = self.query_one(DocumentProgress), self.query_one(StatusBar)
        document.start(os.path.basename(path))

        def progress(update: IngestProgress) -> None:  # runs in the worker thread
            document.post_message(DocumentProgress.Advanced(update))
            status.post_message(StatusBar.StatsRequested())

        start = lambda: engine.ask_document(path, question, self.sampling, progress)  # noqa: E731
        await self._start_reply(f"{question}\n— document: {path}", start, "reading document…")

    async def _start_reply(self, shown: str, start: Callable[[], Iterator[str]], phase: str) -> None:
        chat = self.query_one(ChatView)
        chat.anchor()
        await chat.add_user(shown)
        reply = await chat.start_reply()
        self.replying, self._cancel_requested = True, False
        self.query_one(StatusBar).phase = phase
        self.refresh_bindings()
        self._stream_reply(start, reply)

    @work(thread=True, group="reply", exit_on_error=False)
    def _stream_reply(self, start: Callable[[], Iterator[str]], reply: AssistantMessage) -> None:
        error = None
        try:
            for delta in start():
                reply.post_message(AssistantMessage.TokenReceived(delta))
        except Exception as err:
            logger.debug("reply failed", exc_info=True)
            error = describe(err)
        reply.post_message(AssistantMessage.ReplyFinished(cancelled=self._cancel_requested, error=error))

    async def on_assistant_message_reply_finished(self, event: AssistantMessage.ReplyFinished) -> None:
        self.replying = False
        self.query_one(DocumentProgress).finish()
        status = self.query_one(StatusBar)
        status.phase = ""
        status.refresh_stats()
        self.refresh_bindings()
        if event.error is not None:
            self.notify(event.error, severity="error", markup=False)
        await self.send_queued()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel_reply":
            return self.replying
        return True

    def action_cancel_reply(self) -> None:
        if self.replying and self.engine is not None:
            self._cancel_requested = True
            self.engine.cancel()

    def prefill_prompt(self, text: str) -> None:
        """Put ``text`` in the prompt, cursor at the end (the palette does this for commands with arguments)."""
        prompt = self.query_one(PromptInput)
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    async def run_command_line(self, text: str) -> None:
        """Run ``/name args``; a mistake or an engine failure becomes an error notification."""
        try:
            line = CommandLine.parse(text)
            await getattr(self, f"_command_{line.name}")(line)
        except LexicoError as err:
            self.notify(str(err), severity="error", markup=False)

    async def _command_load(self, line: CommandLine) -> None:
        path, question = line.path_and_rest()
        await self.ask_document(path, question or commands.DEFAULT_QUESTION)

    async def _command_save(self, line: CommandLine) -> None:
        engine = self._idle_engine()
        path = Path(line.path()) if line.args else commands.default_session_path()
        self._save_path = path
        self._engine_call("save", lambda: _save(engine, path, make_parent=not line.args))

    async def _command_resume(self, line: CommandLine) -> None:
        engine, path = self._idle_engine(), line.path()
        self._engine_call("resume", lambda: engine.resume(path) or path)

    async def _command_clear(self, line: CommandLine) -> None:
        engine = self._idle_engine()
        self._engine_call("clear", engine.clear)

    async def _command_system(self, line: CommandLine) -> None:
        engine, text = self._idle_engine(), line.require_args()
        self._engine_call("system", lambda: engine.set_system(text))

    async def _command_stats(self, line: CommandLine) -> None:
        if self.engine is None:
            raise LexicoError("the model is still loading; try again in a moment")
        self._engine_call("stats", self.engine.stats, exclusive=False)

    async def _command_help(self, line: CommandLine) -> None:
        await self.add_note(commands.help_markdown())

    async def _command_quit(self, line: CommandLine) -> None:
        await self.app.action_quit()

    def _engine_call(self, name: str, call: Callable[[], Any], exclusive: bool = True) -> None:
        """Run ``call`` in a worker; ``exclusive`` calls keep other engine calls out until they finish."""
        self.working = self.working or exclusive
        self._run_engine_call(name, call, exclusive)

    @work(thread=True, group="engine", exit_on_error=False)
    def _run_engine_call(self, name: str, call: Callable[[], Any], exclusive: bool) -> None:
        try:
            self.post_message(self.CommandFinished(name, call(), exclusive))
        except Exception as err:
            logger.debug("/%s failed", name, exc_info=True)
            self.post_message(self.CommandFailed(name, describe(err), exclusive))

    async def on_chat_screen_command_finished(self, event: CommandFinished) -> None:
        self.working = self.working and not event.exclusive
        chat = self.query_one(ChatView)
        if event.name == "stats":
            self.app.push_screen(StatsScreen(event.result))
            return
        if event.name in ("resume", "clear", "system") and self.engine is not None:
            await chat.show_transcript(self.engine.transcript)
        done = {"save": "Session saved to {}", "resume": "Resumed {}", "clear": "Conversation cleared",
                "system": "System prompt set; new conversation"}  # fmt: skip
        self.notify(done[event.name].format(event.result), markup=False)
        self.query_one(StatusBar).refresh_stats()

    def on_chat_screen_command_failed(self, event: CommandFailed) -> None:
        self.working = self.working and not event.exclusive
        if event.name != "save":
            self.notify(f"/{event.name}: {event.message}", severity="error", markup=False)
            return
        other = str(commands.other_session_path(self._save_path))
        self.prefill_prompt(f'/save "{other}"' if " " in other else f"/save {other}")
        message = f"/save: {event.message}. The conversation is kept: edit the path in the prompt and press Enter."
        self.notify(message, severity="error", markup=False)


def _save(engine: ChatEngine, path: Path, make_parent: bool) -> str:
    if make_parent:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SaveError(f"cannot save to {path}: cannot create {path.parent} ({err.strerror})") from None
    return engine.save(str(path))
