"""Slash commands (typed and from the command palette) and error notifications, against a fake engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Label, ProgressBar

from lexico_chat.errors import LexicoError
from lexico_chat.tui.screens.stats import StatsScreen
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.document_progress import DocumentProgress
from lexico_chat.tui.widgets.note import Note
from lexico_chat.tui.widgets.prompt_input import PromptInput
from lexico_chat.tui.widgets.user_message import UserMessage
from tests.tui_fake import (
    REPLY,
    SIZE,
    FakeEngine,
    chat_turn,
    make_app,
    pilot_test,
    ready,
    submit,
    wait_for,
)


@pilot_test
async def test_slash_commands_call_the_engine(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await chat_turn(pilot, "hi")

        async def command(text: str, method: str) -> tuple:
            count = len(engine.calls)
            await submit(pilot, text)
            await wait_for(pilot, lambda: len(engine.calls) > count and not app.chat.working)
            await pilot.pause()
            assert engine.calls[-1][0] == method, engine.calls
            return engine.calls[-1]

        assert await command("/save ~/x.lexico", "save") == ("save", str(Path.home() / "x.lexico"))
        _, saved = await command("/save", "save")
        assert saved.startswith(str(tmp_path / "data" / "lexico-chat" / "sessions" / "session-"))
        assert saved.endswith(".lexico") and (tmp_path / "data" / "lexico-chat" / "sessions").is_dir()
        assert f"Session saved to {saved}" in [message for _, message in app.notes]

        assert await command("/resume '/tmp/my session.lexico'", "resume") == ("resume", "/tmp/my session.lexico")
        assert [m.text for m in app.query(UserMessage)] == ["What was saved?"]
        assert [m.text for m in app.query(AssistantMessage)] == ["This **resumed** reply."]

        assert await command("/system Be brief.", "set_system") == ("set_system", "Be brief.")
        assert await command("/clear", "clear") == ("clear",)
        assert not app.query(UserMessage) and not app.query(AssistantMessage)
        assert not app.errors()


@pilot_test
async def test_load_document_shows_progress() -> None:
    engine = FakeEngine(hold=2)  # the reply waits after two deltas: the document is read by then
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        bar = app.query_one(DocumentProgress)
        await submit(pilot, '/load "my notes.txt" What is it about?')
        await wait_for(pilot, lambda: bar.query_one(ProgressBar).progress == 1000)
        assert bar.display and "my notes.txt: 1,000 / 1,000 tokens · 500 tok/s" in str(bar.query_one(Label).render())
        assert engine.calls[0] == ("ask_document", "my notes.txt", "What is it about?", None)
        engine.release.set()
        await wait_for(pilot, lambda: not app.chat.replying)
        assert not bar.display
        await submit(pilot, "/load other.txt")
        await wait_for(pilot, lambda: len(engine.calls) == 2 and not app.chat.replying)
        assert engine.calls[1] == ("ask_document", "other.txt", "Summarise this document.", None)


@pilot_test
async def test_stats_help_and_quit() -> None:
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await submit(pilot, "/help")
        await wait_for(pilot, lambda: app.query(Note))
        help_text = app.query_one(Note).source
        for usage in ("/load FILE [question]", "/save [FILE]", "/resume FILE", "/clear", "/system TEXT", "/stats"):
            assert usage in help_text
        assert "/quit" in help_text and "Ctrl+J" in help_text

        await submit(pilot, "/stats")
        await wait_for(pilot, lambda: isinstance(app.screen, StatsScreen))
        table = app.screen.query_one(DataTable)
        assert table.row_count == len(engine.stats_values.layers) + 1
        assert table.get_row_at(0)[:5] == ["0", "192.0 KiB", "64.0 KiB", "256.0 KiB", "2.0 MiB"]
        assert table.get_row("total")[5] == "12.5%"
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, StatsScreen))

        await submit(pilot, "/quit")
        await wait_for(pilot, lambda: not app.is_running)
    assert app.return_code == 0


@pilot_test
async def test_palette_runs_slash_commands() -> None:
    engine = FakeEngine()
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+p", *"/clear")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: ("clear",) in engine.calls)
        await pilot.press("ctrl+p", *"/load")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.query_one(PromptInput).text == "/load ")


@pytest.mark.parametrize(
    ("command", "fail", "expected"),
    [
        ("hello", {"send": LexicoError("the prompt does not fit: 9000 tokens > 8192 positions")}, "does not fit"),
        ("/load big.txt", {"ask_document": LexicoError("big.txt needs 12000 tokens; 8192 fit")}, "12000 tokens"),
        ("/save /x.lexico", {"save": RuntimeError("disk [full]")}, "/save: RuntimeError: disk [full]"),
        ("/resume other.lexico", {"resume": LexicoError("saved with another model")}, "another model"),
        ("/frobnicate", {}, "unknown command /frobnicate"),
        ("/resume", {}, "/resume needs an argument"),
    ],
)
@pilot_test
async def test_errors_become_notifications(command: str, fail: dict, expected: str) -> None:
    engine = FakeEngine(fail=fail)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await submit(pilot, command)
        await wait_for(pilot, lambda: app.errors())
        assert expected in app.errors()[0]
        await wait_for(pilot, lambda: not app.chat.replying and not app.chat.working)
        await pilot.pause()
        assert all(reply.text for reply in app.query(AssistantMessage))  # no empty reply left behind
        engine.fail.clear()
        reply = await chat_turn(pilot, "still there?")
        assert reply.text == "".join(REPLY)


@pilot_test
async def test_busy_engine_refuses_second_request() -> None:
    engine = FakeEngine(hold=1)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await submit(pilot, "first")
        await submit(pilot, "/clear")
        await wait_for(pilot, lambda: app.errors())
        assert "busy" in app.errors()[0] and "clear" not in engine.methods()
        engine.release.set()
