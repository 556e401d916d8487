"""``build_app``: the Starlette application of ``lexico-chat serve`` (routes, API-key check, errors)."""

from __future__ import annotations

import contextlib
import hmac

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from lexico_chat.server.backend import Backend
from lexico_chat.server.config import ServerConfig
from lexico_chat.server.errors import ApiError, exception_handlers
from lexico_chat.server.routes import routes
from lexico_chat.server.service import ChatService
from lexico_chat.server.session_routes import session_routes

__all__ = ["BearerAuth", "build_app"]


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <key>`` (else 401)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self._expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                error = ApiError(
                    401,
                    "missing or incorrect API key: send `Authorization: Bearer <key>` with the server's --api-key",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(backend: Backend, config: ServerConfig) -> Starlette:
    """The application serving ``backend`` with ``config``; its ChatService is ``app.state.service`` and its
    worker thread stops when the application shuts down."""
    service = ChatService(backend, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            service.close()

    app = Starlette(routes=routes + session_routes, exception_handlers=exception_handlers(), lifespan=lifespan)
    app.state.service = service
    if config.api_key:
        app.add_middleware(BearerAuth, key=config.api_key)
    return app
