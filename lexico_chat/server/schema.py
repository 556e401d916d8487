"""Validating a ``POST /v1/chat/completions`` body into a ``ChatRequest`` (400 naming the parameter, the
allowed values and what was received)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from lexico_chat.engine.types import Message, SamplingConfig
from lexico_chat.server.config import ServerConfig
from lexico_chat.server.errors import ApiError, bad_request

__all__ = ["ChatRequest", "parse_chat_request", "parse_json"]

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4
_SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request, checked."""

    model: str
    messages: tuple[Message, ...]
    sampling: SamplingConfig
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def parse_json(raw: bytes):
    """The JSON value of a body, or 400 saying where it is malformed."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})", code="invalid_json") from None


def parse_chat_request(body, config: ServerConfig) -> ChatRequest:
    """Check every field the server uses; unknown fields are ignored, unsupported ones refused."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_kind(body)}", None, "invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(f"`model` must be a non-empty string, got {_kind(model)}", "model", "invalid_type")
    _refuse_unsupported(body)
    temperature = _number(body, "temperature", config.temperature, 0.0, 2.0)
    top_p = _number(body, "top_p", config.top_p, 0.0, 1.0, low_open=True)
    seed = _integer(body, "seed", config.seed, *_SEED_RANGE)
    max_tokens = _integer(body, "max_tokens", config.max_tokens, 1, None)
    max_tokens = _integer(body, "max_completion_tokens", max_tokens, 1, None)
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request(f"`stream_options` must be an object, got {_kind(options)}", "stream_options", "invalid_type")
    include_usage = _boolean(options or {}, "include_usage", False, "stream_options.include_usage")
    chat = _messages(body.get("messages"))
    if config.system and not any(m.role == "system" for m in chat):
        chat = (Message("system", config.system), *chat)
    return ChatRequest(
        model=model,
        messages=chat,
        sampling=SamplingConfig(temperature, top_p, seed, max_tokens),
        stop=_stops(body.get("stop")),
        stream=stream,
        include_usage=include_usage,
    )


def _messages(value) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise bad_request(f"`messages` must be an array of messages, got {_kind(value)}", "messages", "invalid_type")
    if not value:
        raise bad_request("`messages` must hold at least one message, got an empty array", "messages")
    messages = tuple(_message(item, f"messages[{i}]") for i, item in enumerate(value))
    if messages[-1].role != "user":
        raise bad_request(
            f"the last message must have role 'user', got {messages[-1].role!r}", f"messages[{len(value) - 1}].role"
        )
    if not messages[-1].content.strip():
        raise bad_request("the last user message is empty", f"messages[{len(value) - 1}].content")
    return messages


def _message(item, where: str) -> Message:
    if not isinstance(item, dict):
        raise bad_request(
            f"`{where}` must be an object with role and content, got {_kind(item)}", where, "invalid_type"
        )
    role = item.get("role")
    if role not in ROLES:
        raise bad_request(f"`{where}.role` must be one of {list(ROLES)}, got {role!r}", f"{where}.role")
    return Message(ROLES[role], _content(item.get("content"), f"{where}.content"))


def _content(value, where: str) -> str:
    """A string, or an array of text parts (joined); other part types (images, audio) are refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                got = part.get("type") if isinstance(part, dict) else _kind(part)
                raise bad_request(f"`{where}[{i}]` must be a text part {{type: 'text', text}}, got {got!r}", where)
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(
        f"`{where}` must be a string or an array of text parts, got {_kind(value)}", where, "invalid_type"
    )


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise bad_request(
            f"`stop` must be a non-empty string or an array of at most {MAX_STOPS} of them, got {value!r}"[:300], "stop"
        )
    return tuple(stops)


def _refuse_unsupported(body: dict) -> None:
    if body.get("n") not in (None, 1):
        raise bad_request(f"`n` must be 1 (one choice per request), got {body.get('n')!r}", "n")
    for name in ("tools", "functions", "logprobs", "audio"):
        if body.get(name) not in (None, False, []):
            raise bad_request(f"`{name}` is not supported by this server", name, "unsupported_parameter")
    kind = (body.get("response_format") or {}).get("type") if isinstance(body.get("response_format"), dict) else None
    if body.get("response_format") is not None and kind != "text":
        raise bad_request(
            "`response_format` must be {type: 'text'} on this server", "response_format", "unsupported_value"
        )


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(f"`{name}` must be a number, got {_kind(value)}", name, "invalid_type")
    if not (low < value if low_open else low <= value) or value > high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise bad_request(f"`{name}` must be in {interval}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str, default: int, low: int, high: int | None) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"`{name}` must be an integer, got {_kind(value)}", name, "invalid_type")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise bad_request(f"`{name}` must be {allowed}, got {value}", name)
    return value


def _boolean(body: dict, name: str, default: bool, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"`{param or name}` must be true or false, got {_kind(value)}", param or name, "invalid_type")
    return value


def _kind(value) -> str:
    """How a JSON value reads in an error: its JSON type, with short scalars shown."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return "array" if isinstance(value, list) else "object"
