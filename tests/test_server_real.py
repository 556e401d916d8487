"""End to end on the real default model (SmolLM2-135M-Instruct, its shipped N=4096 dictionary, s=8): the
openai client's replies, streamed and not, equal ChatSession's greedy replies token for token; the second
turn reuses the first from the cache; save, restart, restore and continue equals the uninterrupted chat."""

from __future__ import annotations

import pytest

from lexico_chat.config import CacheConfig
from lexico_chat.engine.caches import resolve_dictionary
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.server.backend import make_backend
from lexico_chat.server.config import ServerConfig
from tests.test_server_support import greedy, messages, start_server

pytestmark = pytest.mark.slow

OPTIONS = SessionOptions(cache=CacheConfig(sparsity=8, atoms=4096, buffer=32, window=32))  # compresses a short chat
QUESTIONS = ("What is the capital of France?", "And of Italy?", "Which one is larger?")
TOKENS = 8


@pytest.fixture(scope="module")
def dictionary(default_model):
    return resolve_dictionary(default_model, OPTIONS)


def test_real_model_replies_reuse_and_restore_equal_chat_session(default_model, dictionary, tmp_path):
    reference = ChatSession(default_model, OPTIONS, dictionary=dictionary)
    expected, usages = [], []
    for question in QUESTIONS:
        expected.append("".join(reference.send(question, greedy(TOKENS))))
        usages.append(reference.last_usage)
    backend = make_backend(default_model, OPTIONS, dictionary)
    model = backend.model_id
    server = start_server(backend, ServerConfig(session_dir=tmp_path))
    try:
        client = server.openai()
        first = client.chat.completions.create(model=model, messages=messages(QUESTIONS[0]), max_tokens=TOKENS)
        assert first.choices[0].message.content == expected[0]
        assert first.usage.completion_tokens == usages[0].completion_tokens
        history = messages(QUESTIONS[0], expected[0], QUESTIONS[1])
        chunks = list(
            client.chat.completions.create(
                model=model, messages=history, max_tokens=TOKENS, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[1]
        usage = chunks[-1].usage
        assert usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
        assert (usage.prompt_tokens, usage.completion_tokens) == (usages[1].prompt_tokens, usages[1].completion_tokens)
        with server.http() as http:
            saved = http.post("/v1/lexico/sessions/capitals", json={"completion_id": chunks[-1].id}).json()
    finally:
        server.stop()
    restarted = start_server(backend, ServerConfig(session_dir=tmp_path))
    try:
        with restarted.http() as http:
            restored = http.post("/v1/lexico/sessions/capitals/restore").json()
        assert restored["tokens"] == saved["tokens"] and restored["messages"][-1]["content"] == expected[1]
        third = restarted.openai().chat.completions.create(
            model=model, messages=restored["messages"] + messages(QUESTIONS[2]), max_tokens=TOKENS
        )
        assert third.choices[0].message.content == expected[2]
        assert third.usage.prompt_tokens_details.cached_tokens == saved["tokens"] == usages[2].cached_tokens
        assert third.model_extra["lexico"]["kv_bytes"] == reference.stats().kv_bytes
        assert third.model_extra["lexico"]["tokens_compressed"] > 0
    finally:
        restarted.stop()
