"""Helpers for the server tests (no tests here): a tiny model with a printable tokenizer, the engine
reference, and a real uvicorn server on 127.0.0.1 with an ephemeral port, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import httpx
import torch

from lexico_chat.config import CacheConfig
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.types import Message, SamplingConfig
from lexico_chat.models import LoadedModel
from lexico_chat.server.app import build_app
from lexico_chat.server.backend import make_backend
from lexico_chat.server.config import ServerConfig
from tests.conftest import build_tiny_model, random_dictionary

TINY_OPTIONS = SessionOptions(cache=CacheConfig(sparsity=4, atoms=64, buffer=16, window=8), prefill_chunk=16)
FAST_OPTIONS = SessionOptions(cache=CacheConfig(sparsity=4, atoms=64, buffer=512, window=16), prefill_chunk=64)
"""FAST_OPTIONS compress nothing in a short chat: for tests about queueing and load, not about codes."""
API_KEY = "test-key-123"


def char_tokenizer():
    """A fast tokenizer with one token per character for all 128 ids of the tiny models (3 specials, newline,
    printable ASCII, then Latin-1 letters), so every generated id shows in the text; ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = "\n" + "".join(chr(i) for i in range(32, 127)) + "".join(chr(i) for i in range(0xC0, 0xC0 + 29))
    vocab = {token: i for i, token in enumerate(specials + list(chars))}
    assert len(vocab) == 128
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def tiny_engine(seed: int = 0, step_delay: float = 0.0):
    """(LoadedModel, dictionary) of a fresh tiny Llama. With ``step_delay``, every forward call takes that
    many seconds longer and the special tokens (end of turn) are never sampled, so a generation runs to
    its token limit: long enough to be interrupted or queued behind."""
    model = build_tiny_model("llama", seed=seed)
    if step_delay:
        model.register_forward_pre_hook(lambda module, args: time.sleep(step_delay))
        model.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.arange(3), -1e9))
    return LoadedModel(model, char_tokenizer(), "tiny-llama"), random_dictionary(model)


def reference_session(loaded, dictionary, options: SessionOptions = TINY_OPTIONS) -> ChatSession:
    return ChatSession(loaded, options, dictionary=dictionary)


def greedy(n: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=n)


def messages(*texts: str) -> list[dict]:
    """OpenAI messages alternating user / assistant, starting with the user."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def as_messages(dicts: list[dict]) -> list[Message]:
    return [Message(d["role"], d["content"]) for d in dicts]


@dataclass
class RunningServer:
    """A uvicorn server in a thread serving ``app`` on 127.0.0.1:``port``."""

    app: object
    server: object
    thread: threading.Thread
    port: int
    api_key: str | None

    @property
    def service(self):
        return self.app.state.service

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def openai(self, api_key: str | None = None, **kwargs):
        from openai import OpenAI

        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key or self.api_key or "none", **kwargs)

    def http(self, api_key: str | None = None, **kwargs) -> httpx.Client:
        key = api_key or self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "server did not stop"


def start_server(backend, config: ServerConfig) -> RunningServer:
    """Serve ``backend`` on an ephemeral loopback port; returns once it accepts connections."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    app = build_app(backend, config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    return RunningServer(app, server, thread, sock.getsockname()[1], config.api_key)


def tiny_server(loaded, dictionary, tmp_dir, options: SessionOptions = TINY_OPTIONS, **config) -> RunningServer:
    config.setdefault("session_dir", tmp_dir)
    return start_server(make_backend(loaded, options, dictionary), ServerConfig(**config))
