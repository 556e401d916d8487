"""SVG snapshots of the chat TUI (pytest-textual-snapshot) with a fake engine: every figure is canned.

Regenerate after a deliberate UI change with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and
look at the SVGs under tests/__snapshots__/ before committing them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from lexico_chat.tui.app import LexicoApp
from lexico_chat.tui.screens.load_error import LoadErrorDialog
from lexico_chat.tui.screens.stats import StatsScreen
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.prompt_input import PromptInput
from lexico_chat.tui.widgets.status_bar import StatusBar
from tests.tui_fake import FakeEngine, empty_stats, fake_stats, missing_dictionary_factory

SIZE = (100, 32)
INTERVAL = 3600.0  # no timer refresh during a snapshot: the figures come from the first fetch only


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def settle(pilot) -> None:
    """Engine loaded, figures shown, cursor steady (no blink)."""
    app = pilot.app
    await wait_for(lambda: app.engine is not None and app.query_one(StatusBar).stats is not None)
    app.query_one(PromptInput).cursor_blink = False
    await pilot.pause()


def replies_done(app: LexicoApp) -> bool:
    return not app.chat.replying and all(reply.finished for reply in app.query(AssistantMessage))


async def converse(pilot) -> None:
    await settle(pilot)
    for text in ("Show me a Python hello world.", "Thanks!"):
        pilot.app.query_one(PromptInput).load_text(text)
        await pilot.press("enter")
        await wait_for(lambda: replies_done(pilot.app))
    await pilot.pause()


def test_main_screen_conversation(snap_compare) -> None:
    app = LexicoApp(lambda: FakeEngine(delay=0), stats_interval=INTERVAL)
    assert snap_compare(app, terminal_size=SIZE, run_before=converse)


def test_status_bar_gpu_narrow(snap_compare) -> None:
    """At 80 columns the status bar wraps between figures, never inside one."""
    gpu = fake_stats(gpu_used_bytes=5 << 29, gpu_total_bytes=80 << 30, torch_allocated_bytes=3 << 28)
    app = LexicoApp(lambda: FakeEngine(stats_values=gpu), stats_interval=INTERVAL)
    assert snap_compare(app, terminal_size=(80, 24), run_before=settle)


def test_status_bar_empty_cache(snap_compare) -> None:
    """Before the first message the ratio is "—", not "100.0% of fp16 · 1.0× smaller"."""
    app = LexicoApp(lambda: FakeEngine(stats_values=empty_stats()), stats_interval=INTERVAL)
    assert snap_compare(app, terminal_size=SIZE, run_before=settle)


def test_stats_screen(snap_compare) -> None:
    async def open_stats(pilot) -> None:
        await settle(pilot)
        await pilot.app.chat.run_command_line("/stats")
        await wait_for(lambda: isinstance(pilot.app.screen, StatsScreen))
        await pilot.pause()

    app = LexicoApp(lambda: FakeEngine(), stats_interval=INTERVAL)
    assert snap_compare(app, terminal_size=SIZE, run_before=open_stats)


def test_missing_dictionary_dialog(snap_compare) -> None:
    async def dialog(pilot) -> None:
        await wait_for(lambda: isinstance(pilot.app.screen, LoadErrorDialog))
        await pilot.pause()

    app = LexicoApp(missing_dictionary_factory(), stats_interval=INTERVAL)
    assert snap_compare(app, terminal_size=SIZE, run_before=dialog)
