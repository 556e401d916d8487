"""``ConversationStore``: the server's compressed conversations (one ChatSession each, all on one model and
dictionary), chosen by the longest cached prefix and kept under a memory budget by dropping the least
recently used.

Every method that touches a session runs on the worker thread (one at a time); ``snapshot`` reads only
the figures recorded after each turn, so the stats endpoint never waits for a generation.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Conversation", "ConversationStore", "held_bytes"]

logger = logging.getLogger(__name__)


def held_bytes(stats) -> int:
    """Bytes a conversation's cache holds: the storage it reserved (never less than the live KV bytes)."""
    return max(stats.allocated_bytes, stats.kv_bytes)


@dataclass
class Conversation:
    """One cached conversation: its session, when it was last used, the figures after its last turn."""

    id: str
    session: object  # ChatSession
    stats: object = None  # SessionStats after the last turn
    last_used: int = 0
    turns: int = 0
    created: float = field(default_factory=time.time)
    last_usage: object = None  # TurnUsage of the last turn

    def describe(self) -> dict:
        figures = self.stats.to_dict() if self.stats is not None else {}
        usage = dataclasses.asdict(self.last_usage) if self.last_usage is not None else None
        return {
            "id": self.id,
            "turns": self.turns,
            "messages": len(self.session.transcript),
            "created": int(self.created),
            "held_bytes": held_bytes(self.stats) if self.stats is not None else 0,
            "last_usage": usage,
            **figures,
        }


class ConversationStore:
    """Conversations under a budget of ``budget`` bytes (exact bytes their caches reserve).

    Parameters
    ----------
    new_session : makes an empty ChatSession sharing the server's model and dictionary.
    budget : bytes all conversations may hold together after a turn.
    """

    def __init__(self, new_session: Callable[[], object], budget: int) -> None:
        self.new_session, self.budget = new_session, budget
        self._conversations: dict[str, Conversation] = {}
        self._completions: dict[str, str] = {}  # completion id -> conversation id
        self._clock = itertools.count(1)
        self._lock = threading.RLock()  # guards the dicts against readers on the event loop
        self.evictions = 0

    # ----- worker thread ---------------------------------------------------------------------------
    def choose(self, messages) -> tuple[Conversation, int]:
        """The conversation that ``messages`` extend furthest (ties: the most recent), with the tokens it
        reuses; a new, not yet stored conversation when none does."""
        best, reused = None, 0
        for conversation in sorted(self._conversations.values(), key=lambda c: -c.last_used):
            tokens = conversation.session.reusable_tokens(list(messages))
            if tokens > reused:
                best, reused = conversation, tokens
        if best is None:
            best = Conversation(f"conv-{uuid.uuid4().hex[:20]}", self.new_session())
        return best, reused

    def commit(self, conversation: Conversation, completion_id: str | None = None) -> list[str]:
        """Record a finished turn (or a restore): store the conversation as the most recent, refresh its
        figures, then drop least recently used conversations until the budget holds. Returns the ids
        dropped (``conversation`` itself when it alone is over the budget)."""
        session = conversation.session
        conversation.stats = session.stats()
        conversation.last_usage = getattr(session, "last_usage", None)
        conversation.last_used = next(self._clock)
        if completion_id is not None:
            conversation.turns += 1
        with self._lock:
            if session.cached_ids:
                self._conversations[conversation.id] = conversation
            else:  # a failed prefill leaves an empty cache: nothing worth keeping
                self._drop(conversation.id)
            if completion_id is not None and conversation.id in self._conversations:
                self._completions[completion_id] = conversation.id
            return self._enforce_budget()

    def _enforce_budget(self) -> list[str]:
        dropped = []
        for conversation in sorted(self._conversations.values(), key=lambda c: c.last_used):
            if self.total_bytes() <= self.budget:
                break
            self._drop(conversation.id)
            dropped.append(conversation.id)
        if dropped:
            self.evictions += len(dropped)
            logger.info("cache memory over %d bytes: dropped %s", self.budget, ", ".join(dropped))
        return dropped

    def _drop(self, conversation_id: str) -> None:
        self._conversations.pop(conversation_id, None)
        for completion in [k for k, v in self._completions.items() if v == conversation_id]:
            del self._completions[completion]

    # ----- any thread ------------------------------------------------------------------------------
    def find(self, conversation: str | None = None, completion: str | None = None) -> Conversation | None:
        """A stored conversation by its id, or by the id of a completion that used it."""
        with self._lock:
            if completion is not None:
                conversation = self._completions.get(completion)
            return self._conversations.get(conversation) if conversation else None

    def total_bytes(self) -> int:
        with self._lock:
            return sum(held_bytes(c.stats) for c in self._conversations.values() if c.stats is not None)

    def snapshot(self) -> list[Conversation]:
        """The stored conversations, most recently used first."""
        with self._lock:
            return sorted(self._conversations.values(), key=lambda c: -c.last_used)
