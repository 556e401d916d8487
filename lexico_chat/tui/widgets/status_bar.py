"""The status bar: memory, KV cache size against fp16, tokens, speed and model, all from ``engine.stats()``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from textual import work
from textual.content import Content
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from lexico_chat.engine.types import ChatEngine, SessionStats
from lexico_chat.tui.format import pack_segments, status_segments

logger = logging.getLogger(__name__)


class StatusBar(Widget):
    """Polls ``engine.stats()`` every ``interval`` seconds in a worker thread (one fetch at a time, so a slow
    engine never blocks the UI); ``refresh_stats()`` asks for an extra fetch (end of a turn, ingest progress).
    ``phase`` (e.g. "generating…") is shown after the figures."""

    stats: reactive[SessionStats | None] = reactive(None, layout=True)
    phase: reactive[str] = reactive("", layout=True)

    @dataclass
    class StatsUpdated(Message, bubble=False):
        """A worker fetched fresh figures (None when ``engine.stats()`` failed)."""

        stats: SessionStats | None

    @dataclass
    class StatsRequested(Message, bubble=False):
        """Something changed (e.g. a document chunk was read): fetch figures now, if no fetch is running."""

    def __init__(self, interval: float = 1.0, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.engine: ChatEngine | None = None
        self.interval = interval
        self._fetching = False

    def on_mount(self) -> None:
        self.set_interval(self.interval, self.refresh_stats)

    def attach(self, engine: ChatEngine) -> None:
        self.engine = engine
        self.refresh_stats()

    def refresh_stats(self) -> None:
        if self.engine is None or self._fetching:
            return
        self._fetching = True
        self._fetch(self.engine)

    @work(thread=True, group="stats", exit_on_error=False)
    def _fetch(self, engine: ChatEngine) -> None:
        try:
            stats = engine.stats()
        except Exception:  # keep the last figures; the next tick tries again
            logger.debug("engine.stats() failed", exc_info=True)
            stats = None
        self.post_message(self.StatsUpdated(stats))

    def on_status_bar_stats_requested(self, event: StatsRequested) -> None:
        self.refresh_stats()

    def on_status_bar_stats_updated(self, event: StatsUpdated) -> None:
        self._fetching = False
        if event.stats is not None:
            self.stats = event.stats

    def _lines(self, width: int) -> list[str]:
        segments = [] if self.stats is None else status_segments(self.stats)
        if self.phase:
            segments.append(self.phase)
        return pack_segments(segments, max(width, 1))

    def render(self) -> Content:
        return Content("\n".join(self._lines(self.size.width)))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(self._lines(width)))
