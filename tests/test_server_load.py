"""A bounded load test: 16 concurrent clients x 3 turns against a server with a short queue and a memory
budget that holds a few conversations. Nothing is lost: every request ends with its full reply (equal to
the engine's, along the same cache path) or a 503 that is retried; the budget holds throughout (sampled
from /v1/lexico/stats while the clients run); the server stays up."""

from __future__ import annotations

import random
import threading
import time

import openai
import pytest

from lexico_chat.server.store import held_bytes
from tests.test_server_support import (
    FAST_OPTIONS,
    as_messages,
    greedy,
    messages,
    reference_session,
    tiny_engine,
    tiny_server,
)

CLIENTS, TURNS, MAX_TOKENS = 16, 3, 4
MODEL = "tiny-llama"


def _question(client: int, turn: int) -> str:
    return f"client {client} turn {turn}: hello?"


class Client(threading.Thread):
    """One user: three turns, each retried after a 503 (up to a deadline)."""

    def __init__(self, index: int, server, start: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.index, self.server, self.start_together = index, server, start
        self.turns: list[dict] = []  # {"messages", "reply", "usage", "finish"}
        self.busy = 0
        self.errors: list[str] = []

    def run(self) -> None:
        client = self.server.openai(timeout=30)
        history: list[str] = []
        self.start_together.wait()
        deadline = time.monotonic() + 90
        for turn in range(TURNS):
            history.append(_question(self.index, turn))
            while True:
                try:
                    reply = client.chat.completions.create(
                        model=MODEL, messages=messages(*history), max_tokens=MAX_TOKENS
                    )
                    break
                except openai.APIStatusError as err:
                    if err.status_code != 503 or err.response.headers.get("retry-after") != "1":
                        self.errors.append(f"{err.status_code}: {err.message}")
                        return
                    self.busy += 1
                except openai.APIError as err:  # a lost connection or timeout: the server failed us
                    self.errors.append(repr(err))
                    return
                if time.monotonic() > deadline:
                    self.errors.append("gave up retrying")
                    return
                time.sleep(random.uniform(0.05, 0.2))  # shorter than Retry-After: keep the queue full
            choice = reply.choices[0]
            self.turns.append({"messages": messages(*history), "reply": choice.message.content, "usage": reply.usage})
            self.turns[-1]["finish"] = choice.finish_reason
            history.append(choice.message.content)


def _references(loaded, dictionary, turns: list[dict]) -> list[str]:
    """The engine's replies along the server's cache path: a turn that reused nothing (first turn, or its
    conversation was dropped for memory) starts a fresh session; a turn that reused its cache continues it."""
    replies, session = [], None
    for turn in turns:
        if turn["usage"].prompt_tokens_details.cached_tokens == 0:
            session = reference_session(loaded, dictionary, FAST_OPTIONS)
        replies.append("".join(session.respond(as_messages(turn["messages"]), greedy(MAX_TOKENS))))
        assert session.last_usage.cached_tokens == turn["usage"].prompt_tokens_details.cached_tokens
        assert session.last_usage.prompt_tokens == turn["usage"].prompt_tokens
    return replies


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(step_delay=0.002)  # never ends a reply early, so a full reply is MAX_TOKENS tokens


def _budget(loaded, dictionary) -> int:
    """Room for about four conversations of three turns."""
    session, history = reference_session(loaded, dictionary, FAST_OPTIONS), []
    for turn in range(TURNS):
        history.append(_question(0, turn))
        history.append("".join(session.respond(as_messages(messages(*history)), greedy(MAX_TOKENS))))
    return 4 * held_bytes(session.stats())


def test_sixteen_clients_three_turns_lose_nothing_and_the_budget_holds(engine, tmp_path):
    loaded, dictionary = engine
    budget = _budget(loaded, dictionary)
    server = tiny_server(loaded, dictionary, tmp_path, FAST_OPTIONS, queue=2, cache_memory=budget)
    try:
        barrier = threading.Barrier(CLIENTS)
        clients = [Client(i, server, barrier) for i in range(CLIENTS)]
        held, stop = [], threading.Event()

        def monitor() -> None:
            with server.http() as http:
                while not stop.is_set():
                    held.append(http.get("/v1/lexico/stats").json()["server"]["held_bytes"])
                    time.sleep(0.05)

        watcher = threading.Thread(target=monitor, daemon=True)
        watcher.start()
        for client in clients:
            client.start()
        for client in clients:
            client.join(120)
        stop.set()
        watcher.join(10)
        assert not any(c.is_alive() for c in clients), "a client hung"
        assert [c.errors for c in clients] == [[]] * CLIENTS
        assert all(len(c.turns) == TURNS for c in clients)
        assert sum(c.busy for c in clients) > 0, "the queue never filled: the test did not load the server"
        for client in clients:
            assert all(t["usage"].completion_tokens == MAX_TOKENS and t["finish"] == "length" for t in client.turns)
            assert [t["reply"] for t in client.turns] == _references(loaded, dictionary, client.turns)
        with server.http() as http:
            assert http.get("/health").json()["status"] == "ok"
            stats = http.get("/v1/lexico/stats").json()["server"]
        assert held and max(held) <= budget and stats["held_bytes"] <= budget == stats["cache_memory"]
        assert stats["evictions"] > 0 and stats["requests"]["completed"] == CLIENTS * TURNS
        assert stats["requests"]["rejected"] == sum(c.busy for c in clients) and stats["queue"]["outstanding"] == 0
    finally:
        server.stop()
