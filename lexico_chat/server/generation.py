"""``Generation``: one chat turn, run on the worker thread, its events handed to the event loop.

Events, in order: ``Started`` (the conversation chosen) or ``Failed``; then ``Delta`` texts; then
``Finished`` (usage, finish reason, figures) or ``Failed``. ``cancel()`` (client gone) stops the engine
within one token; a stop string does the same, and what the model generated past it stays in the
conversation's cache (the engine cannot roll a compressed cache back).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from lexico_chat.errors import LexicoError
from lexico_chat.server.errors import ApiError, from_lexico
from lexico_chat.server.schema import ChatRequest
from lexico_chat.server.stops import StopMatcher
from lexico_chat.server.worker import post_to_loop

__all__ = ["Delta", "Failed", "Finished", "Generation", "Started"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    conversation: str
    reused_tokens: int
    stats: object  # SessionStats before the turn (None for a new conversation)


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    text: str  # the whole reply as sent
    usage: object  # TurnUsage
    finish_reason: str  # "stop" | "length" | "cancelled"
    conversation: str
    stats: object  # SessionStats after the turn
    evicted: tuple[str, ...]


@dataclass(frozen=True)
class Failed:
    error: ApiError


class Generation:
    """One request's turn. Create on the event loop, ``run`` on the worker thread, read ``next_event``."""

    def __init__(self, request: ChatRequest, store, loop: asyncio.AbstractEventLoop, counters=None) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.request, self.store, self.loop = request, store, loop
        self.counters = counters if counters is not None else Counter()  # completed / cancelled / failed
        self.events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self._lock = threading.Lock()  # cancel() never reaches a session after this turn has left it
        self.session = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop this turn (any thread): before it starts it never runs; while it runs the engine stops
        within one token and the partial reply stays in the conversation."""
        self._cancelled.set()
        with self._lock:
            if self.session is not None:
                self.session.cancel()

    async def next_event(self):
        return await self.events.get()

    def _emit(self, event) -> None:
        if isinstance(event, Failed):
            self.counters["cancelled" if event.error.code == "cancelled" else "failed"] += 1
        elif isinstance(event, Finished):
            self.counters["cancelled" if event.finish_reason == "cancelled" else "completed"] += 1
        post_to_loop(self.loop, self.events.put_nowait, event)

    # ----- worker thread ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as err:  # noqa: BLE001 - reported to the client as a 500, logged here
            logger.exception("generation %s failed", self.id)
            self._emit(Failed(ApiError(500, f"generation failed ({type(err).__name__}); see the server log")))

    def _run(self) -> None:
        if self.cancelled:
            self._emit(Failed(ApiError(499, "the client closed the request before it started", code="cancelled")))
            return
        conversation, reused = self.store.choose(self.request.messages)
        session = conversation.session
        try:
            stream = session.respond(list(self.request.messages), self.request.sampling)
        except LexicoError as err:
            self._emit(Failed(from_lexico(err)))
            return
        with self._lock:
            self.session = session
        self._emit(Started(conversation.id, reused, conversation.stats))
        matcher = StopMatcher(self.request.stop)
        try:
            text = self._stream(session, stream, matcher)
        except LexicoError as err:
            self.store.commit(conversation)
            self._emit(Failed(from_lexico(err)))
            return
        except BaseException:
            self.store.commit(conversation)
            raise
        finally:
            with self._lock:
                self.session = None
        evicted = self.store.commit(conversation, self.id)
        usage = session.last_usage
        finish = "stop" if matcher.hit else usage.finish_reason
        self._emit(Finished(text, usage, finish, conversation.id, conversation.stats, tuple(evicted)))

    def _stream(self, session, stream, matcher: StopMatcher) -> str:
        """Forward the engine's deltas through the stop matcher; returns the text sent."""
        received, sent = [], []

        def send(text: str) -> None:
            if text:
                sent.append(text)
                self._emit(Delta(text))

        for delta in stream:
            received.append(delta)
            if self.cancelled or matcher.hit:
                session.cancel()  # again: the engine clears a cancel that came before its turn began
                continue
            send(matcher.feed(delta))
            if matcher.hit:
                session.cancel()
        last = session.transcript[-1] if session.transcript else None
        reply, streamed = (last.content if last is not None and last.role == "assistant" else ""), "".join(received)
        if not self.cancelled and reply.startswith(streamed):  # text the engine held back (partial UTF-8)
            send(matcher.feed(reply[len(streamed) :]))
        send(matcher.flush())
        return "".join(sent)
