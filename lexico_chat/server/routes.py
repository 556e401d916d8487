"""Endpoints: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, ``GET /v1/lexico/stats``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lexico_chat.server.errors import ApiError
from lexico_chat.server.generation import Delta, Failed, Finished
from lexico_chat.server.schema import parse_chat_request, parse_json
from lexico_chat.server.sse import EventStream, watch_disconnect
from lexico_chat.server.views import completion_body, lexico_headers

__all__ = ["read_json", "routes"]


async def read_json(request: Request):
    """The request's JSON body (413 over the size limit, 400 when malformed)."""
    limit = request.app.state.service.config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {declared} bytes; the limit is {limit}", code="body_too_large")
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, f"the request body has {len(raw)} bytes; the limit is {limit}", code="body_too_large")
    return parse_json(raw)


async def chat_completions(request: Request):
    service = request.app.state.service
    chat = parse_chat_request(await read_json(request), service.config)
    generation = service.start(chat)
    watcher = watch_disconnect(request.receive, generation.cancel)
    try:
        first = await generation.next_event()
        if isinstance(first, Failed):
            raise first.error
        if chat.stream:
            stream = EventStream(
                generation, service.backend.model_id, watcher, lexico_headers(first.conversation, first.stats)
            )
            watcher = None  # the stream owns it now
            return stream
        while not isinstance(event := await generation.next_event(), Finished | Failed):
            assert isinstance(event, Delta)
        if isinstance(event, Failed):
            raise event.error
        body = completion_body(generation, service.backend.model_id, event)
        return JSONResponse(body, headers=lexico_headers(event.conversation, event.stats))
    finally:
        if watcher is not None:
            watcher.cancel()
            generation.cancel()  # a no-op once finished; stops the turn if this handler fails early


def _model(service) -> dict:
    return {"id": service.backend.model_id, "object": "model", "created": service.started, "owned_by": "lexico-chat"}


async def list_models(request: Request):
    return JSONResponse({"object": "list", "data": [_model(request.app.state.service)]})


async def get_model(request: Request):
    service = request.app.state.service
    service.check_model(request.path_params["model"])
    return JSONResponse(_model(service))


async def health(request: Request):
    service = request.app.state.service
    queue = {"outstanding": service.worker.outstanding, "limit": service.config.queue}
    return JSONResponse({"status": "ok", "model": service.backend.model_id, "queue": queue})


async def stats(request: Request):
    return JSONResponse(request.app.state.service.stats())


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/v1/lexico/stats", stats, methods=["GET"]),
]
