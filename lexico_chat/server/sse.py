"""Streamed replies: OpenAI ``chat.completion.chunk`` objects as server-sent events, ending with
``data: [DONE]``, and the disconnect watch that cancels a generation whose client went away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from lexico_chat.server.generation import Delta, Failed, Finished, Generation
from lexico_chat.server.views import lexico_figures, usage_body

__all__ = ["DONE", "EventStream", "sse", "watch_disconnect"]

logger = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def watch_disconnect(receive: Receive, on_disconnect) -> asyncio.Task:
    """A task that calls ``on_disconnect()`` when the client closes the connection (after the body has
    been read, the next ASGI message of a request is ``http.disconnect``)."""

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                on_disconnect()
                return

    return asyncio.create_task(watch())


class EventStream(Response):
    """The SSE response of a started generation; owns the disconnect watch from then on.

    A send that fails (client gone) or a disconnect cancels the generation, which stops within one
    token; the conversation keeps the partial reply.
    """

    media_type = "text/event-stream"

    def __init__(self, generation: Generation, model: str, watcher: asyncio.Task, headers: dict[str, str]) -> None:
        self.status_code, self.background = 200, None  # no body: chunked, without a content-length
        self.init_headers({**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
        self.generation, self.model, self.watcher = generation, model, watcher

    def _chunk(self, delta: dict | None, finish: str | None = None, **extra) -> dict:
        g = self.generation
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        body = {"id": g.id, "object": "chat.completion.chunk", "created": g.created, "model": self.model}
        body.update(choices=choices, **extra)
        if g.request.include_usage and "usage" not in body:
            body["usage"] = None
        return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        finished = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await self._body(send, {"role": "assistant", "content": ""})
            while True:
                event = await self.generation.next_event()
                if isinstance(event, Delta):
                    await self._body(send, {"content": event.text})
                elif isinstance(event, Finished):
                    finished = True
                    await self._finish(send, event)
                    break
                elif isinstance(event, Failed):
                    finished = True
                    await send({"type": "http.response.body", "body": sse(event.error.body()), "more_body": True})
                    break
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
        except OSError:  # the client went away between two chunks
            logger.info("client of %s disconnected", self.generation.id)
        finally:
            if not finished:
                self.generation.cancel()
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher

    async def _body(self, send: Send, delta: dict) -> None:
        await send({"type": "http.response.body", "body": sse(self._chunk(delta)), "more_body": True})

    async def _finish(self, send: Send, event: Finished) -> None:
        last = self._chunk({}, event.finish_reason, lexico=lexico_figures(event.conversation, event.stats, event))
        chunks = [last]
        if self.generation.request.include_usage:
            chunks.append(self._chunk(None, usage=usage_body(event.usage)))
        for chunk in chunks:
            await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})
