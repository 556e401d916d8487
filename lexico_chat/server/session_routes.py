"""Saved conversations: ``GET /v1/lexico/sessions``, ``POST /v1/lexico/sessions/{id}`` (save),
``POST /v1/lexico/sessions/{id}/restore``, ``DELETE /v1/lexico/sessions/{id}``.

Ids capture the whole rest of the path (``{id:path}``) so that an id holding ``/`` or ``..`` reaches
the id check and gets 400 instead of slipping through the router.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from lexico_chat.server.routes import read_json

__all__ = ["session_routes"]


async def list_sessions(request: Request):
    return JSONResponse({"object": "list", "data": request.app.state.service.saved.list()})


async def save_session(request: Request):
    service = request.app.state.service
    session_id = request.path_params["id"]
    service.saved.path(session_id)  # a bad id fails before the body is looked at
    return JSONResponse(await service.save(session_id, await read_json(request)))


async def restore_session(request: Request):
    return JSONResponse(await request.app.state.service.restore(request.path_params["id"]))


async def delete_session(request: Request):
    session_id = request.path_params["id"]
    request.app.state.service.saved.delete(session_id)
    return JSONResponse({"id": session_id, "object": "lexico.session", "deleted": True})


async def get_session(request: Request):
    return JSONResponse(request.app.state.service.saved.describe(request.path_params["id"]))


session_routes = [
    Route("/v1/lexico/sessions", list_sessions, methods=["GET"]),
    Route("/v1/lexico/sessions/{id:path}/restore", restore_session, methods=["POST"]),
    Route("/v1/lexico/sessions/{id:path}", save_session, methods=["POST"]),
    Route("/v1/lexico/sessions/{id:path}", get_session, methods=["GET"]),
    Route("/v1/lexico/sessions/{id:path}", delete_session, methods=["DELETE"]),
]
