"""SVG snapshots of the chat TUI (pytest-textual-snapshot) with a fake engine: every figure is canned. The
first-run screens show a real ``FirstRunTraining`` offer for the tiny model, its figures planned from canned
probe rates (``probe_rates`` patched), and a training run held at a canned progress.

Regenerate after a deliberate UI change with ``pytest tests/test_tui_snapshots.py --snapshot-update`` and
look at the SVGs under tests/__snapshots__/ before committing them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lexico_chat import lookup
from lexico_chat.engine.first_run import FirstRunTraining
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.startup import TrainingCancelled, TrainingProgress
from lexico_chat.models import LoadedModel
from lexico_chat.training import plan
from lexico_chat.tui.app import LexicoApp
from lexico_chat.tui.screens.stats import StatsScreen
from lexico_chat.tui.screens.training import TrainingScreen
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.prompt_input import PromptInput
from lexico_chat.tui.widgets.status_bar import StatusBar
from tests.test_server_support import char_tokenizer
from tests.tui_fake import (
    FakeEngine,
    empty_stats,
    fake_stats,
    load_error_ready,
    missing_dictionary_factory,
    raising_factory,
)

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
        await wait_for(lambda: load_error_ready(pilot.app))
        await pilot.pause()

    app = LexicoApp(missing_dictionary_factory(), stats_interval=INTERVAL)
    assert snap_compare(app, terminal_size=SIZE, run_before=dialog)


# ---- first run: the "Train now" offer and the training screen ----------------------------------------------

RATES = plan.Rates("cpu", "float32", omp_per_s=4200.0, exact_omp_per_s=4200.0, update_s=0.35, tokens_per_s=900.0)
CORPUS = (["The quick brown fox jumps over the lazy dog. " * 400], "a canned text")  # 18,000 tokens
HOME = "/home/ada/.cache/lexico-chat"  # shown in the message and the command; nothing is written there
MID_TRAINING = TrainingProgress(0.42, "fitting layer 2 keys, error 0.140 (round 3 of 5)", 95.0, 131.0)


@pytest.fixture
def first_run(tiny_model, monkeypatch) -> FirstRunTraining:
    """The offer for the tiny Llama at s=8, N=4096, planned from ``RATES``; the folders it names are fixed
    (the package's own and the temporary user cache would put this checkout's paths in the snapshot)."""
    monkeypatch.setattr(plan, "probe_rates", lambda loaded, atoms, sparsity: RATES)
    monkeypatch.setenv("LEXICO_CHAT_HOME", HOME)
    folders = [Path("/opt/lexico-chat/dictionaries"), lookup.user_dictionary_folder()]
    monkeypatch.setattr(lookup, "search_folders", lambda: folders)
    loaded = LoadedModel(tiny_model("llama"), char_tokenizer(), "tiny-org/TinyName")
    return FirstRunTraining(loaded, SessionOptions(model="TinyName", device="cpu"), corpus=CORPUS)


@pytest.mark.parametrize("size", [SIZE, (80, 24)], ids=["100x32", "80x24"])
def test_train_now_dialog(snap_compare, first_run, size) -> None:
    """The estimate, the disk figures and "Train now" (focused) for a model without a dictionary; where the
    text is taller than the terminal (80×24) it scrolls in the panel, under its title and above the buttons."""

    async def dialog(pilot) -> None:
        await wait_for(lambda: load_error_ready(pilot.app))
        await pilot.pause()

    app = LexicoApp(raising_factory(first_run.missing_error()), stats_interval=INTERVAL)
    assert snap_compare(app, terminal_size=size, run_before=dialog)


def test_training_screen_mid_training(snap_compare, first_run, monkeypatch) -> None:
    """After "Train now": the offer's summary, the bar at 42%, the stage and its ETA, and Cancel."""
    app = LexicoApp(raising_factory(first_run.missing_error()), stats_interval=INTERVAL)

    def held_training(progress, cancel: threading.Event):
        progress(MID_TRAINING)
        deadline = time.monotonic() + 20  # a failed snapshot must not leave the worker waiting forever
        while app.return_value is None and time.monotonic() < deadline:  # until the snapshot's exit
            if cancel.wait(0.01):
                break
        raise TrainingCancelled("the snapshot is taken")

    monkeypatch.setattr(first_run, "train", held_training)

    async def training(pilot) -> None:
        await wait_for(lambda: load_error_ready(pilot.app))
        await pilot.press("enter")  # "Train now" has the focus
        await wait_for(lambda: isinstance(pilot.app.screen, TrainingScreen) and pilot.app.screen.last is not None)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=training)
