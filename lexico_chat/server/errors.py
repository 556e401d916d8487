"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status, never a
traceback."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from lexico_chat.errors import LexicoError, SaveError

__all__ = ["ApiError", "bad_request", "error_body", "exception_handlers"]

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(Exception):
    """An error answer: HTTP ``status`` with an OpenAI-style body (and optional extra headers)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def from_lexico(err: LexicoError, param: str | None = "messages") -> ApiError:
    """A user mistake the engine found (empty message, context overflow, mismatched session file), or a failed save."""
    text = str(err)
    if isinstance(err, SaveError):  # the server's disk, not the request, is at fault
        return ApiError(500, text, param=None, code="save_failed")
    code = "context_length_exceeded" if "context" in text and "tokens" in text else "invalid_value"
    return ApiError(400, text, param=param, code=code)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    return exc.response()


async def _lexico_error(request: Request, exc: Exception) -> JSONResponse:
    return from_lexico(exc, None).response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return ApiError(exc.status_code, message, code=code, headers=dict(exc.headers or {})).response()


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, f"internal server error ({type(exc).__name__}); see the server log").response()


def exception_handlers() -> dict:
    return {ApiError: _api_error, LexicoError: _lexico_error, HTTPException: _http_error, Exception: _internal_error}
