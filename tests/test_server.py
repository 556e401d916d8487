"""The OpenAI-compatible server on a tiny model, driven by the official ``openai`` client over a real
uvicorn server on 127.0.0.1: replies equal ChatSession's token for token, usage and cache reuse, stop
strings, sampling, saved sessions across a restart, bad input, API keys, disconnects and a full queue."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

from lexico_chat.engine.template import render
from lexico_chat.engine.types import SamplingConfig
from tests.test_server_support import (
    API_KEY,
    FAST_OPTIONS,
    as_messages,
    greedy,
    messages,
    reference_session,
    tiny_engine,
    tiny_server,
)

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    running = tiny_server(*engine, tmp_path_factory.mktemp("sessions"), api_key=API_KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.openai()


def _conversation_stats(server, conversation: str) -> dict:
    with server.http() as http:
        stats = http.get("/v1/lexico/stats").json()
    return next(c for c in stats["conversations"] if c["id"] == conversation)


def test_two_turns_equal_chat_session_and_the_second_reuses_the_first(engine, server, client):
    ref = reference_session(*engine)
    q1, q2 = "Hello there, who are you?", "Tell me more."
    r1, u1 = "".join(ref.send(q1, greedy(12))), ref.last_usage
    r2, u2 = "".join(ref.send(q2, greedy(12))), ref.last_usage
    assert len(r1) >= 6 and len(r2) >= 6  # the tiny model's greedy replies are long enough to mean something
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages(q1), max_tokens=12, temperature=0
    )
    first = raw.parse()
    assert first.choices[0].message.content == r1 and first.choices[0].finish_reason == u1.finish_reason
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (u1.prompt_tokens, u1.completion_tokens)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    conversation = raw.headers["x-lexico-conversation"]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages(q1, r1, q2), max_tokens=12)
    second = raw.parse()
    assert second.choices[0].message.content == r2
    assert second.usage.prompt_tokens_details.cached_tokens == u1.prompt_tokens + u1.completion_tokens
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (u2.prompt_tokens, u2.completion_tokens)
    # the figures: the same conversation, its exact cache bytes (the same as the reference's, same path)
    assert raw.headers["x-lexico-conversation"] == conversation == second.model_extra["lexico"]["conversation"]
    expected = ref.stats()
    assert int(raw.headers["x-lexico-kv-bytes"]) == expected.kv_bytes == second.model_extra["lexico"]["kv_bytes"]
    assert float(raw.headers["x-lexico-kv-fraction"]) == pytest.approx(expected.kv_fraction, abs=1e-6)
    figures = _conversation_stats(server, conversation)
    assert (figures["kv_bytes"], figures["fp16_bytes"]) == (expected.kv_bytes, expected.fp16_bytes)
    assert figures["tokens_compressed"] == expected.tokens_compressed > 0 and figures["turns"] == 2


def test_streaming_equals_chat_session_with_usage_and_done(engine, server, client):
    ref = reference_session(*engine)
    q1, q2 = "Stream me a reply.", "And another one."
    r1, u1 = "".join(ref.send(q1, greedy(10))), ref.last_usage
    r2 = "".join(ref.send(q2, greedy(10)))
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=messages(q1), max_tokens=10, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == u1.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u1.completion_tokens
    assert chunks[-1].usage.prompt_tokens == u1.prompt_tokens and all(c.usage is None for c in chunks[:-1])
    body = {"model": MODEL, "messages": messages(q1, r1, q2), "max_tokens": 10, "stream": True}
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == r2
    assert events[-1]["lexico"]["kv_bytes"] == ref.stats().kv_bytes and "usage" not in events[-1]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_reply_and_the_truncated_reply_reprefills(engine, client, stream):
    question = f"Say something ({'streamed' if stream else 'whole'})."
    ref = reference_session(*engine)
    full = "".join(ref.send(question, greedy(16)))
    stop = full[4:6]
    expected = full[: full.find(stop)]
    kwargs = {"model": MODEL, "messages": messages(question), "max_tokens": 16, "stop": [stop, "never-seen"]}
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        reply = client.chat.completions.create(**kwargs)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert (text, finish) == (expected, "stop")
    # the cache holds what was generated past the stop string, so sending back the cut reply starts afresh
    follow = client.chat.completions.create(model=MODEL, messages=messages(question, text, "Go on."), max_tokens=4)
    assert follow.usage.prompt_tokens_details.cached_tokens == 0


def test_sampling_with_seed_top_p_and_max_completion_tokens(engine, client):
    question = "Pick random letters."
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, seed=5, max_new_tokens=7)
    expected = "".join(reference_session(*engine).send(question, sampling))
    replies = [
        client.chat.completions.create(
            model=MODEL,
            messages=messages(question),
            temperature=1.0,
            top_p=0.9,
            seed=5,
            max_tokens=50,
            max_completion_tokens=7,
        )
        for _ in range(2)
    ]
    assert [r.choices[0].message.content for r in replies] == [expected, expected]
    assert replies[0].usage.completion_tokens == 7 and replies[0].choices[0].finish_reason == "length"
    other = client.chat.completions.create(
        model=MODEL, messages=messages(question), temperature=1.0, seed=6, max_tokens=7
    )
    assert other.choices[0].message.content != expected


def test_models_health_and_stats(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with server.http() as http:
        assert http.get("/health").json()["status"] == "ok"
        stats = http.get("/v1/lexico/stats").json()
    s = stats["server"]
    assert s["held_bytes"] == sum(c["held_bytes"] for c in stats["conversations"]) <= s["cache_memory"]
    assert s["kv_bytes"] == sum(c["kv_bytes"] for c in stats["conversations"])
    assert s["cache"] == "lexico" and s["sparsity"] == 4 and s["atoms"] == 64 and s["rss_bytes"] > 0


def _post(server, body: bytes | dict | list, path="/v1/chat/completions", key=API_KEY) -> httpx.Response:
    with server.http(api_key=key) as http:
        if isinstance(body, bytes):
            return http.post(path, content=body, headers={"content-type": "application/json"})
        return http.post(path, json=body)


def _good(**changes) -> dict:
    return {"model": MODEL, "messages": messages("Hi"), "max_tokens": 2, **changes}


BAD_REQUESTS = [
    (b'{"model": "tiny-llama", "messages": [', None, "invalid_json"),
    (b"\xff\xfe", None, "invalid_json"),
    (["not", "an", "object"], None, "invalid_type"),
    ({"messages": messages("Hi")}, "model", "invalid_type"),
    (_good(messages="Hi"), "messages", "invalid_type"),
    (_good(messages=[]), "messages", "invalid_value"),
    (_good(messages=[{"role": "wizard", "content": "Hi"}]), "messages[0].role", "invalid_value"),
    (_good(messages=[{"role": "user", "content": 3}]), "messages[0].content", "invalid_type"),
    (_good(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content", "invalid_value"),
    (_good(messages=messages("Hi", "Hello")), "messages[1].role", "invalid_value"),
    (_good(messages=messages("   ")), "messages[0].content", "invalid_value"),
    (_good(temperature="hot"), "temperature", "invalid_type"),
    (_good(temperature=5), "temperature", "invalid_value"),
    (_good(top_p=0), "top_p", "invalid_value"),
    (_good(max_tokens=0), "max_tokens", "invalid_value"),
    (_good(max_tokens="10"), "max_tokens", "invalid_type"),
    (_good(max_completion_tokens=1.5), "max_completion_tokens", "invalid_type"),
    (_good(seed=True), "seed", "invalid_type"),
    (_good(stream="yes"), "stream", "invalid_type"),
    (_good(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage", "invalid_type"),
    (_good(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),
    (_good(stop=[""]), "stop", "invalid_value"),
    (_good(n=2), "n", "invalid_value"),
    (_good(tools=[{"type": "function"}]), "tools", "unsupported_parameter"),
]


@pytest.mark.parametrize("body, param, code", BAD_REQUESTS)
def test_bad_requests_get_openai_style_400(server, body, param, code):
    response = _post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code) and "Traceback" not in response.text


def test_unknown_model_and_huge_max_tokens(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=messages("Hi"))
    assert caught.value.body["code"] == "model_not_found" and "tiny-llama" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=messages("Hi"), max_tokens=10**6)
    message = caught.value.body["message"]
    assert caught.value.body["code"] == "context_length_exceeded" and "1000000" in message and "1024" in message
    response = _post(server, {}, path="/v1/no/such/endpoint")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/v1/lexico/stats", "/v1/lexico/sessions"])
def test_every_endpoint_needs_the_api_key(server, path):
    for key in ("wrong-key", None):
        with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"} if key else {}) as h:
            response = h.get(path)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.openai(api_key="wrong-key").chat.completions.create(model=MODEL, messages=messages("Hi"))


@pytest.mark.parametrize("session_id", ["%2E%2E", "..%2Fescape", "a%2Fb", "a.b", "a%20b", "x" * 65])
def test_session_ids_are_checked(server, session_id):
    with server.http() as http:
        for method, path in (
            ("POST", f"/v1/lexico/sessions/{session_id}"),
            ("POST", f"/v1/lexico/sessions/{session_id}/restore"),
            ("DELETE", f"/v1/lexico/sessions/{session_id}"),
            ("GET", f"/v1/lexico/sessions/{session_id}"),
        ):
            response = http.request(method, path, json={"conversation": "conv-x"})
            assert response.status_code == 400, (method, path, response.text)
            assert response.json()["error"]["code"] == "invalid_session_id"


def test_save_restart_restore_continue_equals_an_uninterrupted_conversation(engine, tmp_path):
    questions = ("What is a cache?", "Why compress it?", "Thank you.")
    ref = reference_session(*engine)
    expected = ["".join(ref.send(q, greedy(10))) for q in questions]
    first = tiny_server(*engine, tmp_path, api_key=API_KEY)
    try:
        client, history = first.openai(), []
        for question in questions[:2]:
            history += [question]
            reply = client.chat.completions.create(model=MODEL, messages=messages(*history), max_tokens=10)
            history += [reply.choices[0].message.content]
        assert history[1::2] == expected[:2]
        with first.http() as http:
            saved = http.post("/v1/lexico/sessions/chat-1", json={"completion_id": reply.id}).json()
            assert http.post("/v1/lexico/sessions/chat-2", json={"conversation": "conv-nope"}).status_code == 404
            assert http.post("/v1/lexico/sessions/chat-2", json={}).status_code == 400
        assert saved["id"] == "chat-1" and saved["tokens"] == reply.usage.prompt_tokens + reply.usage.completion_tokens
    finally:
        first.stop()
    second = tiny_server(*engine, tmp_path, api_key=API_KEY)  # a restarted server: nothing cached
    try:
        with second.http() as http:
            assert [s["id"] for s in http.get("/v1/lexico/sessions").json()["data"]] == ["chat-1"]
            restored = http.post("/v1/lexico/sessions/chat-1/restore").json()
            assert http.post("/v1/lexico/sessions/missing/restore").status_code == 404
        assert as_messages(restored["messages"]) == as_messages(messages(*history))
        reply = second.openai().chat.completions.create(
            model=MODEL, messages=restored["messages"] + messages(questions[2]), max_tokens=10
        )
        assert reply.choices[0].message.content == expected[2]
        assert reply.usage.prompt_tokens_details.cached_tokens == saved["tokens"] == restored["tokens"]
        assert reply.model_extra["lexico"]["conversation"] == restored["conversation"]
        with second.http() as http:
            assert http.delete("/v1/lexico/sessions/chat-1").json()["deleted"] is True
            assert http.delete("/v1/lexico/sessions/chat-1").status_code == 404
            assert http.get("/v1/lexico/sessions").json()["data"] == []
    finally:
        second.stop()


# ----- slow generations: disconnects and a full queue ------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    loaded, dictionary = tiny_engine(step_delay=0.03)  # ~30 ms a token
    running = tiny_server(loaded, dictionary, tmp_path_factory.mktemp("slow"), FAST_OPTIONS, queue=1)
    yield running
    running.stop()


def _stream(http: httpx.Client, text: str, max_tokens: int):
    body = {"model": MODEL, "messages": messages(text), "max_tokens": max_tokens, "stream": True}
    return http.stream("POST", "/v1/chat/completions", json=body)


def _wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def test_disconnect_mid_stream_cancels_within_a_token_and_keeps_the_conversation(slow_server):
    service = slow_server.service
    with slow_server.http() as http:
        with _stream(http, "Talk for a long time.", 200) as response:
            conversation = response.headers["x-lexico-conversation"]
            received = 0
            for line in response.iter_lines():
                received += '"content"' in line and '"content":""' not in line
                if received == 3:
                    break
        _wait_until(lambda: service.worker.outstanding == 0)
        found = service.store.find(conversation)
        usage = found.last_usage
        assert usage.finish_reason == "cancelled" and 3 <= usage.completion_tokens <= 3 + 3
        session = found.session
        tokenizer = session.loaded.tokenizer
        assert render(tokenizer, session.transcript, add_generation_prompt=False).startswith(session.cached_text)
        assert session.cache.get_seq_length() == len(session.cached_ids)
        partial, cached = session.transcript[-1].content, len(session.cached_ids)
        body = {"model": MODEL, "messages": messages("Talk for a long time.", partial, "Short now."), "max_tokens": 2}
        follow = http.post("/v1/chat/completions", json=body).json()
    assert follow["usage"]["prompt_tokens_details"]["cached_tokens"] == cached
    assert follow["lexico"]["conversation"] == conversation


def test_full_queue_answers_503_and_a_queued_client_that_leaves_is_never_run(slow_server):
    service = slow_server.service
    before = dict(service.counters)
    conversations = len(service.store.snapshot())
    body = json.dumps({"model": MODEL, "messages": messages("Queued."), "max_tokens": 2}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}"
    with slow_server.http() as http, _stream(http, "Hold the model.", 300) as running:
        lines = running.iter_lines()  # kept: dropping the iterator would close the stream
        assert running.status_code == 200 and next(lines).startswith("data: ")
        queued = socket.create_connection(("127.0.0.1", slow_server.port))  # waits behind the stream ...
        queued.sendall(head.encode() + b"\r\n\r\n" + body)
        _wait_until(lambda: service.worker.outstanding == 2)
        busy = http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": messages("One more."), "max_tokens": 2}
        )
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "server_busy"
        with pytest.raises(openai.InternalServerError):
            slow_server.openai().chat.completions.create(model=MODEL, messages=messages("Again."), max_tokens=2)
        queued.close()  # ... and leaves before its turn
        time.sleep(0.3)  # the server notices (its disconnect watch) while the stream still holds the model
    _wait_until(lambda: service.worker.outstanding == 0)
    counters = service.counters
    assert counters["cancelled"] - before.get("cancelled", 0) == 2  # the stream, and the queued request unrun
    assert counters["completed"] == before.get("completed", 0)
    assert counters["rejected"] - before.get("rejected", 0) == 2
    assert len(service.store.snapshot()) == conversations + 1  # the queued request never made a conversation
    with slow_server.http() as http:
        assert http.get("/health").json()["queue"]["outstanding"] == 0
