"""``ChatService``: the server's state behind the routes: the backend, the conversation store, the
worker, the saved-session folder and the request counters."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

from lexico_chat.errors import LexicoError
from lexico_chat.server.backend import Backend
from lexico_chat.server.config import ServerConfig
from lexico_chat.server.errors import ApiError, from_lexico
from lexico_chat.server.generation import Generation
from lexico_chat.server.saved import SavedSessions
from lexico_chat.server.schema import ChatRequest
from lexico_chat.server.store import Conversation, ConversationStore, held_bytes
from lexico_chat.server.worker import QueueFull, Worker

__all__ = ["ChatService"]

_SUMMED = (
    "kv_bytes",
    "compressed_bytes",
    "buffer_bytes",
    "fp16_bytes",
    "allocated_bytes",
    "tokens_compressed",
    "tokens_buffer",
    "context_tokens",
)


class ChatService:
    """Everything a request needs; one per server."""

    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        self.backend, self.config = backend, config
        self.store = ConversationStore(backend.new_session, config.cache_memory)
        self.worker = Worker(config.queue)
        self.saved = SavedSessions(config.session_dir)
        self.counters: Counter = Counter()
        self.started = int(time.time())

    def close(self) -> None:
        self.worker.close()

    # ----- chat ------------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name not in self.backend.model_names:
            raise ApiError(
                404,
                f"The model `{name}` does not exist on this server; it serves {list(self.backend.model_names)}",
                param="model",
                code="model_not_found",
            )

    def busy(self, err: QueueFull) -> ApiError:
        self.counters["rejected"] += 1
        return ApiError(
            503,
            f"the server is busy: {err}; retry after {self.config.retry_after} s",
            code="server_busy",
            type="server_error",
            headers={"Retry-After": str(self.config.retry_after)},
        )

    def start(self, request: ChatRequest) -> Generation:
        """Queue the turn of ``request``; 503 when the queue is full."""
        self.check_model(request.model)
        generation = Generation(request, self.store, asyncio.get_running_loop(), self.counters)
        try:
            self.worker.submit(generation.run)
        except QueueFull as err:
            raise self.busy(err) from None
        return generation

    # ----- saved sessions --------------------------------------------------------------------------
    async def save(self, session_id: str, body) -> dict:
        """Save the conversation ``body`` names (``{"conversation": id}`` or ``{"completion_id": id}``)."""
        path = self.saved.for_writing(session_id)
        if (
            not isinstance(body, dict)
            or sum(isinstance(body.get(k), str) for k in ("conversation", "completion_id")) != 1
        ):
            raise ApiError(
                400,
                'the body must name the conversation to save: {"completion_id": "chatcmpl-..."} or '
                f'{{"conversation": "conv-..."}}, got {str(body)[:120]}',
                param="conversation",
            )

        def job() -> dict:  # on the worker: after any turn still running on that conversation
            conversation = self.store.find(body.get("conversation"), body.get("completion_id"))
            if conversation is None:
                named = body.get("conversation") or body.get("completion_id")
                raise ApiError(
                    404,
                    f"no cached conversation for {named!r} (unknown, or dropped to keep within --cache-memory)",
                    param="conversation",
                    code="conversation_not_found",
                )
            conversation.session.save(str(path))
            return {**self.saved.describe(session_id), **self._summary(conversation)}

        return await self._on_worker(job)

    async def restore(self, session_id: str) -> dict:
        """Load a saved conversation as a cached one; a request that extends its transcript reuses it."""
        path = self.saved.path(session_id, must_exist=True)

        def job() -> dict:
            session = self.backend.new_session()
            try:
                session.resume(str(path))
            except LexicoError as err:
                raise from_lexico(err, "id") from None
            conversation = Conversation(f"conv-{uuid.uuid4().hex[:20]}", session)
            need = held_bytes(session.stats())
            if need > self.store.budget:
                raise ApiError(
                    400,
                    f"saved session {session_id!r} needs {need} bytes of cache, more than --cache-memory "
                    f"({self.store.budget} bytes)",
                    param="id",
                    code="cache_memory_exceeded",
                )
            evicted = self.store.commit(conversation)
            messages = [{"role": m.role, "content": m.content} for m in session.transcript]
            return {
                **self.saved.describe(session_id),
                **self._summary(conversation),
                "messages": messages,
                "evicted": evicted,
            }

        return await self._on_worker(job)

    async def _on_worker(self, job):
        try:
            return await self.worker.call(job)
        except QueueFull as err:
            raise self.busy(err) from None

    @staticmethod
    def _summary(conversation: Conversation) -> dict:
        session = conversation.session
        return {
            "conversation": conversation.id,
            "tokens": len(session.cached_ids),
            "message_count": len(session.transcript),
        }

    # ----- figures ---------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Server-wide figures (sums over the conversations, process memory, queue) and per conversation."""
        from lexico_chat.engine.sysstats import gpu_memory, rss_bytes

        conversations = self.store.snapshot()
        stats = [c.stats for c in conversations if c.stats is not None]
        totals = {name: sum(getattr(s, name) for s in stats) for name in _SUMMED}
        totals["kv_fraction"] = totals["kv_bytes"] / totals["fp16_bytes"] if totals["fp16_bytes"] else None
        device = str(self.backend.info.get("device", "cpu"))
        used, total = gpu_memory(int(device.split(":")[1]) if device.startswith("cuda:") else 0)
        server = {
            **self.backend.info,
            **totals,
            "conversations": len(conversations),
            "held_bytes": self.store.total_bytes(),
            "cache_memory": self.store.budget,
            "evictions": self.store.evictions,
            "rss_bytes": rss_bytes(),
            "gpu_used_bytes": used,
            "gpu_total_bytes": total,
            "queue": {"outstanding": self.worker.outstanding, "limit": self.config.queue},
            "requests": dict(self.counters),
            "started": self.started,
        }
        return {"object": "lexico.stats", "server": server, "conversations": [c.describe() for c in conversations]}
