"""Server pieces without a server: stop strings split across deltas, sizes, request defaults."""

from __future__ import annotations

import pytest

from lexico_chat.engine.types import Message
from lexico_chat.errors import LexicoError
from lexico_chat.server.config import ServerConfig, parse_size
from lexico_chat.server.errors import ApiError
from lexico_chat.server.schema import parse_chat_request
from lexico_chat.server.stops import StopMatcher


def _run(stops: tuple[str, ...], deltas: list[str]) -> tuple[list[str], bool]:
    matcher = StopMatcher(stops)
    sent = [matcher.feed(d) for d in deltas] + [matcher.flush()]
    return sent, matcher.hit


def test_stop_strings_split_over_deltas_never_leak():
    text = "Hello, END of story"
    for cut in range(1, len(text)):  # every split into two deltas, and one character at a time
        for deltas in ([text[:cut], text[cut:]], list(text)):
            sent, hit = _run(("END", "story"), deltas)
            assert "".join(sent) == "Hello, " and hit
    sent, hit = _run(("ENDING",), ["the EN", "D"])  # a stop string's start that never completes is sent at the end
    assert "".join(sent) == "the END" and not hit and sent[0] == "the "
    assert _run((), ["a", "b"]) == (["a", "b", ""], False)


@pytest.mark.parametrize(
    "text, size", [("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("1000", 1000), ("3k", 3072)]
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1GiB", "2 GiBs", ""])
def test_bad_sizes_name_the_flag(text):
    with pytest.raises(LexicoError, match="--cache-memory"):
        parse_size(text)


def test_server_defaults_fill_what_a_request_leaves_out(tmp_path):
    config = ServerConfig(session_dir=tmp_path, system="Be brief.", max_tokens=33, temperature=0.5, seed=9)
    request = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, config)
    assert request.messages == (Message("system", "Be brief."), Message("user", "Hi"))
    assert (request.sampling.max_new_tokens, request.sampling.temperature, request.sampling.seed) == (33, 0.5, 9)
    own = [{"role": "developer", "content": "Rules."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    request = parse_chat_request({"model": "m", "messages": own, "max_tokens": 5, "max_completion_tokens": 4}, config)
    assert request.messages == (Message("system", "Rules."), Message("user", "Hi"))
    assert request.sampling.max_new_tokens == 4
    with pytest.raises(ApiError, match="top_p"):
        parse_chat_request({"model": "m", "messages": own, "top_p": 1.5}, config)
