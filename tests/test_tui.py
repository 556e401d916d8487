"""The chat TUI driven by Pilot against a fake engine: streaming, cancel, status bar, history, dialogs."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from textual.widgets.markdown import MarkdownFence

from lexico_chat import lookup
from lexico_chat.engine.startup import LoadingStatus
from lexico_chat.errors import LexicoError, MissingDictionaryError
from lexico_chat.models import ModelDims
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.chat_view import ChatView
from lexico_chat.tui.widgets.prompt_input import PromptInput
from lexico_chat.tui.widgets.status_bar import StatusBar
from lexico_chat.tui.widgets.user_message import UserMessage
from tests.tui_fake import (
    REPLY,
    SIZE,
    FakeEngine,
    RecordingApp,
    chat_turn,
    fake_stats,
    load_error_ready,
    make_app,
    pilot_test,
    raising_factory,
    ready,
    submit,
    wait_for,
)


@pilot_test
async def test_send_streams_markdown_reply() -> None:
    engine = FakeEngine(hold=4)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await submit(pilot, "hello there")
        reply = app.query_one(AssistantMessage)
        await wait_for(pilot, lambda: reply.source == "".join(REPLY[:4]))  # rendered while the model is held
        assert not reply.finished and app.chat.replying
        assert app.query_one(StatusBar).phase == "generating…"
        engine.release.set()
        await wait_for(pilot, lambda: reply.finished)
        assert [m.text for m in app.query(UserMessage)] == ["hello there"]
        assert reply.text == "".join(REPLY) and reply.source == reply.text
        assert [fence.code for fence in reply.query(MarkdownFence)] == ["print('hi')"]  # fence intact
        assert engine.calls == [("send", "hello there", None)]
        assert app.query_one(StatusBar).phase == ""


@pilot_test
async def test_escape_cancels_and_keeps_partial_reply() -> None:
    engine = FakeEngine(hold=3)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await submit(pilot, "tell me")
        reply = app.query_one(AssistantMessage)
        await wait_for(pilot, lambda: reply.text == "".join(REPLY[:3]))
        await pilot.press("escape")
        await wait_for(pilot, lambda: reply.finished)
        assert "cancel" in engine.methods()
        assert reply.text == "".join(REPLY[:3]) and reply.has_class("-cancelled")
        reply2 = await chat_turn(pilot, "again")  # still usable
        assert reply2.text == "".join(REPLY)


@pilot_test
async def test_status_bar_figures() -> None:
    engine = FakeEngine(changing=True)
    app = make_app(engine, stats_interval=0.05)
    async with app.run_test(size=(200, 24)) as pilot:
        await ready(pilot)
        bar = app.query_one(StatusBar)
        await wait_for(pilot, lambda: bar.stats is not None)
        first = bar.stats.context_tokens
        text = str(bar.render())
        for figure in ("CPU RSS 812.0 MiB", "KV 1.0 MiB (fp16 8.0 MiB)", "12.5% of fp16", "8.0× smaller",
                       "896 compressed + ", " buffer tok", "prefill 250.0 tok/s", "decode 13.5 tok/s",
                       "SmolLM2-135M-Instruct · cpu · lexico s=8 N=4096"):  # fmt: skip
            assert figure in text, (figure, text)
        await wait_for(pilot, lambda: bar.stats.context_tokens > first)  # refreshed by the interval


@pilot_test
async def test_status_bar_gpu() -> None:
    gpu = fake_stats(gpu_used_bytes=3 << 29, gpu_total_bytes=80 << 30, kv_fraction=0.2, cache="full", sparsity=None)
    app = make_app(FakeEngine(stats_values=gpu))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        bar = app.query_one(StatusBar)
        await wait_for(pilot, lambda: bar.stats is not None)
        text = str(bar.render())
        assert "GPU 1.5 GiB / 80.0 GiB" in text and "CPU" not in text
        assert "20.0% of fp16 · 5.0× smaller" in text and "cpu · full N=4096" in text


@pilot_test
async def test_input_history_and_newline() -> None:
    app = make_app(FakeEngine(delay=0))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await chat_turn(pilot, "first")
        await chat_turn(pilot, "second\nline")
        prompt = app.query_one(PromptInput)
        await pilot.press(*"draft")
        await pilot.press("up")
        assert prompt.text == "second\nline"
        await pilot.press("up")  # cursor is on the last line of a two-line entry: move up first
        assert prompt.text == "second\nline" and prompt.cursor_location[0] == 0
        await pilot.press("up")
        assert prompt.text == "first"
        await pilot.press("down", "down")
        assert prompt.text == "draft"
        prompt.load_text("")
        await pilot.press("a", "ctrl+j", "b")
        assert prompt.text == "a\nb" and len(app.query(UserMessage)) == 2  # ctrl+j did not send


@pilot_test
async def test_typing_during_a_slow_load_is_kept_and_sent_once_the_model_is_ready() -> None:
    loaded, engine, status = threading.Event(), FakeEngine(), LoadingStatus()

    def slow_factory() -> FakeEngine:
        status("converting model.gguf to safetensors (first run only)…")
        assert loaded.wait(20)
        return engine

    app = RecordingApp(slow_factory, loading=status)
    async with app.run_test(size=SIZE) as pilot:
        bar = app.query_one(StatusBar)
        await wait_for(pilot, lambda: bar.phase.startswith("converting model.gguf to safetensors (first run only)… "))
        assert app.query_one(ChatView).loading and bar.phase.endswith(" s")  # the seconds so far
        await pilot.press(*"too early", "ctrl+j", *"really")  # typed key by key while the model loads
        assert app.query_one(PromptInput).text == "too early\nreally"
        await pilot.press("enter")
        await wait_for(pilot, lambda: bar.phase.endswith(" s · 1 message queued"))
        assert not engine.calls and not app.errors() and app.chat.queued == ["too early\nreally"]
        loaded.set()
        await ready(pilot)
        await wait_for(pilot, lambda: app.query(AssistantMessage) and app.query_one(AssistantMessage).finished)
        assert engine.calls == [("send", "too early\nreally", None)] and not app.chat.queued
        assert [m.text for m in app.query(UserMessage)] == ["too early\nreally"]
        assert app.query_one(AssistantMessage).text == "".join(REPLY) and not app.query_one(ChatView).loading
        assert (await chat_turn(pilot, "now")).text == "".join(REPLY)


@pilot_test
async def test_chat_follows_the_bottom_unless_scrolled_up() -> None:
    long_reply = tuple(f"line {i}\n\n" for i in range(40))
    engine = FakeEngine(reply=long_reply, delay=0, hold=20)
    app = make_app(engine)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        chat = app.query_one(ChatView)
        await submit(pilot, "count")
        reply = app.query_one(AssistantMessage)
        await wait_for(pilot, lambda: reply.source.count("line") == 20 and chat.max_scroll_y > 0)
        await pilot.pause()
        assert chat.scroll_y == chat.max_scroll_y  # following
        chat.scroll_home(animate=False)  # the user scrolls up: stop following
        engine.release.set()
        await wait_for(pilot, lambda: reply.finished)
        await pilot.pause()
        assert chat.scroll_y == 0 < chat.max_scroll_y
        engine.hold = None
        await chat_turn(pilot, "again")  # sending jumps back to the bottom and follows again
        await pilot.pause()
        assert chat.scroll_y == chat.max_scroll_y


def test_missing_dictionary_dialog_shows_the_error_command(tmp_path, monkeypatch) -> None:
    """The dialog shows the command the real lookup's MissingDictionaryError carries, and copies it."""
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path))
    out = tmp_path / "dictionaries" / "Tiny-Model-N32.safetensors"
    flags = f"--atoms 32 --sparsity 8 --out {out}"
    command = f"lexico-chat train-dictionary --model org/Tiny-Model {flags}"
    app = RecordingApp(lambda: lookup.find_dictionary("org/Tiny-Model", ModelDims(2, 3, 8, 128), 32))

    @pilot_test
    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: load_error_ready(app))
            dialog = app.screen
            assert isinstance(dialog.error, MissingDictionaryError) and dialog.command == command
            assert (dialog.error.model_id, dialog.error.atoms) == ("org/Tiny-Model", 32)
            assert str(dialog.query_one("#train-command").render()) == dialog.error.command == command
            assert str(dialog.query_one("#load-error-message").render()) == str(dialog.error)
            assert dialog.error.estimate in str(dialog.error) and str(dialog.error).endswith(command)
            dialog.query_one("#copy-command").press()  # a long temp path can push the button below the fold
            await pilot.pause()
            assert app.clipboard == command
            await pilot.press("escape")
            await wait_for(pilot, lambda: not app.is_running)

    scenario()
    assert app.return_code == 2


@pytest.mark.parametrize(
    "error,shown",
    [
        (LexicoError("model path not found: lexico-chat train-dictionary --model m"),
         "model path not found: lexico-chat train-dictionary --model m"),  # a command in the text is not parsed
        (RuntimeError("out of memory"), "RuntimeError: out of memory"),
    ],
)  # fmt: skip
def test_other_load_errors_show_their_message(error, shown) -> None:
    app = RecordingApp(raising_factory(error))

    @pilot_test
    async def scenario() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: load_error_ready(app))
            dialog = app.screen
            assert str(dialog.query_one("#load-error-message").render()) == shown and dialog.command is None
            assert not dialog.query("#train-command") and not dialog.query("#copy-command")
            assert dialog.query_one("#load-error-panel").border_title == "Could not start the model"
            await pilot.press("escape")
            await wait_for(pilot, lambda: not app.is_running)

    scenario()
    assert app.return_code == 2


def test_tui_does_not_import_torch() -> None:
    code = "import sys, lexico_chat.tui.app; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
