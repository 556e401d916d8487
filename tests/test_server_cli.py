"""``lexico-chat serve`` as a user starts it: a subprocess on a tiny model folder with the API key from the
environment, answering the openai client as ChatSession does; flag mistakes fail in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import openai
import pytest

from lexico_chat.cli import main
from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.models import load_model
from tests.conftest import build_tiny_model, random_dictionary
from tests.test_server_support import char_tokenizer, greedy, messages

FLAGS = ["--atoms", "64", "--sparsity", "4", "--buffer", "16", "--window", "8"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Llama saved as a model folder named like its dictionary's model id, and that dictionary."""
    root = tmp_path_factory.mktemp("model")
    model = build_tiny_model("llama", seed=3)
    model.save_pretrained(root / "tiny")
    char_tokenizer().save_pretrained(root / "tiny")
    dictionary = random_dictionary(model).save(root / "tiny-N64.safetensors")
    return root / "tiny", dictionary


def _wait_for_address(process: subprocess.Popen, timeout: float = 180) -> str:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if "serving" in line and "http://" in line:
            return line.rsplit(" on ", 1)[1].strip()
    process.kill()
    raise AssertionError("the server did not start: " + "".join(seen))


def test_serve_subprocess_answers_like_chat_session_and_needs_the_key(tiny_folder, tmp_path):
    folder, dictionary_path = tiny_folder
    command = [sys.executable, "-m", "lexico_chat.cli", "serve", "--model", str(folder), "--dictionary"]
    command += [str(dictionary_path), *FLAGS, "--port", "0", "--session-dir", str(tmp_path), "--queue", "2"]
    env = {**os.environ, "LEXICO_CHAT_API_KEY": "env-key"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        base = _wait_for_address(process)
        assert base.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=base, api_key="env-key", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="tiny", messages=messages("Hello, server."), max_tokens=8)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="other", max_retries=0).models.list()
        options = SessionOptions(cache=CacheConfig(sparsity=4, atoms=64, buffer=16, window=8))
        session = ChatSession(load_model(str(folder)), options, dictionary=LexicoDictionary.load(dictionary_path))
        assert reply.choices[0].message.content == "".join(session.send("Hello, server.", greedy(8)))
        assert reply.usage.completion_tokens == session.last_usage.completion_tokens
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "server stopped" in err and "Traceback" not in err


def test_flag_mistakes_fail_in_one_line(capsys):
    assert main(["serve", "--cache-memory", "lots"]) == 2
    err = capsys.readouterr().err
    assert "--cache-memory" in err and "2GiB" in err and len(err.strip().splitlines()) == 1
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:  # the port is checked before the model is loaded
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    finally:
        taken.close()
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", "--queue", "-1"]) == 2
    assert "--queue" in capsys.readouterr().err
