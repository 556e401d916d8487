"""The TUI end to end on the real default model and the shipped dictionary."""

from __future__ import annotations

import pytest

from lexico_chat.config import CacheConfig
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.types import SamplingConfig
from lexico_chat.tui.format import ratio_text
from lexico_chat.tui.widgets.assistant_message import AssistantMessage
from lexico_chat.tui.widgets.status_bar import StatusBar
from tests.tui_fake import RecordingApp, pilot_test, ready, submit, wait_for

pytestmark = pytest.mark.slow


def test_real_model_streams_and_status_bar_matches_stats(default_model, tmp_path):
    sessions = []

    def factory():
        options = SessionOptions(cache=CacheConfig(sparsity=8, atoms=1024, buffer=16, window=8))
        sessions.append(ChatSession(default_model, options))
        return sessions[-1]

    doc = tmp_path / "doc.txt"
    doc.write_text("The harbour master of Port Ellis is named Ada Quint. " + "Ships come and go every day. " * 80)

    @pilot_test
    async def scenario():
        app = RecordingApp(factory, sampling=SamplingConfig(max_new_tokens=12), stats_interval=0.1)
        async with app.run_test(size=(160, 40)) as pilot:
            await ready(pilot)
            await submit(pilot, "What is the capital of France?")
            reply = app.query_one(AssistantMessage)
            await wait_for(pilot, lambda: reply.finished, timeout=120)
            assert "Paris" in reply.text
            await submit(pilot, f"/load {doc} Who is the harbour master of Port Ellis?")
            await wait_for(pilot, lambda: len(app.query(AssistantMessage)) == 2, timeout=30)
            answer = app.query(AssistantMessage)[1]
            await wait_for(pilot, lambda: answer.finished, timeout=180)
            assert answer.text.strip()
            bar = app.query_one(StatusBar)
            stats = sessions[0].stats()
            await wait_for(pilot, lambda: bar.stats is not None and bar.stats.kv_bytes == stats.kv_bytes, timeout=10)
            assert stats.tokens_compressed > 500, "the document went through the compressed cache"
            assert ratio_text(stats) in str(bar.render())
            assert not app.errors()

    scenario()
