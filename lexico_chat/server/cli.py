"""``lexico-chat serve``: the OpenAI-compatible server (see docs/server.md)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from lexico_chat.errors import LexicoError
from lexico_chat.options import (
    add_cache_kind_option,
    add_cache_options,
    add_dictionary_options,
    add_model_options,
    cache_config,
    non_negative_int,
)
from lexico_chat.server.config import API_KEY_ENV, ServerConfig, default_session_dir, parse_size

__all__ = ["register", "run", "server_config", "session_options"]

logger = logging.getLogger(__name__)


def register(commands) -> None:
    parser = commands.add_parser("serve", help="serve the model over an OpenAI-compatible HTTP API")
    add_model_options(parser)
    add_dictionary_options(parser)
    add_cache_options(parser)
    add_cache_kind_option(parser)
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=non_negative_int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    net.add_argument(
        "--api-key", default=None, help=f"require `Authorization: Bearer KEY` on every endpoint (or ${API_KEY_ENV})"
    )
    net.add_argument("--queue", type=non_negative_int, default=8, help="requests that may wait (default 8); more: 503")
    net.add_argument(
        "--cache-memory", type=_size, default="2GiB", help="bytes all cached conversations may hold (default 2GiB)"
    )
    net.add_argument(
        "--session-dir", default=None, help=f"folder of saved conversations (default {default_session_dir()})"
    )
    turn = parser.add_argument_group("defaults for requests that do not say")
    turn.add_argument("--system", default=None, help="system prompt for requests that send none")
    turn.add_argument("--max-new-tokens", type=int, default=512, help="max_tokens (default 512)")
    turn.add_argument("--temperature", type=float, default=0.0, help="temperature (default 0 = greedy)")
    turn.add_argument("--top-p", type=float, default=1.0, help="top_p (default 1)")
    turn.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.set_defaults(func=run)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except LexicoError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--cache-memory ")) from None


def session_options(args: argparse.Namespace):
    """The SessionOptions every conversation of the server gets (the one place flags become options). The
    system prompt is not among them: each request brings its messages, and ``--system`` is put before those
    that have no system message (``ServerConfig.system``)."""
    from lexico_chat.engine.options import SessionOptions

    return SessionOptions(model=args.model, device=args.device, dictionary=args.dictionary, cache=cache_config(args))


def server_config(args: argparse.Namespace) -> ServerConfig:
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    return ServerConfig(
        host=args.host,
        port=args.port,
        api_key=api_key,
        queue=args.queue,
        cache_memory=args.cache_memory,
        session_dir=args.session_dir or default_session_dir(),
        system=args.system,
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise LexicoError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from lexico_chat.server.app import build_app
    except ImportError as err:
        raise LexicoError(f"the server needs starlette and uvicorn ({err}); run `make setup`") from None
    config = server_config(args)
    options = session_options(args)
    sock = _listen(config.host, config.port)  # a taken port fails before the slow model load
    from lexico_chat.server.backend import load_backend

    backend = load_backend(options)
    host, port = sock.getsockname()[:2]
    app = build_app(backend, config)
    level = "info" if logger.isEnabledFor(logging.INFO) else "warning"
    server = uvicorn.Server(uvicorn.Config(app, log_level=level, timeout_graceful_shutdown=5))
    shown = f"[{host}]" if ":" in host else host
    print(f"lexico-chat: serving {backend.model_id} on http://{shown}:{port}/v1", file=sys.stderr, flush=True)
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print("lexico-chat: warning: listening beyond this machine without --api-key", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its graceful shutdown
        pass
    print("lexico-chat: server stopped", file=sys.stderr)
    return 0
