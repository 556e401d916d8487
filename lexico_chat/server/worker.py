"""``Worker``: one thread that runs the model's jobs one at a time, from a bounded queue.

The model is one set of weights and torch work blocks, so generations, saves and restores run here in
arrival order while the event loop keeps serving. ``submit`` refuses a job when ``waiting`` jobs already
wait behind the running one (the caller answers 503).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["QueueFull", "Worker", "post_to_loop"]

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``waiting`` jobs already."""


class Worker:
    """A single worker thread with at most ``waiting`` queued jobs besides the running one."""

    def __init__(self, waiting: int) -> None:
        self.waiting_limit = waiting
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._outstanding = 0  # queued + running
        self._thread = threading.Thread(target=self._loop, name="lexico-serve-worker", daemon=True)
        self._thread.start()

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` (run on the worker thread); raises QueueFull when the queue is full."""
        with self._lock:
            if self._outstanding > self.waiting_limit:
                raise QueueFull(f"{self._outstanding - 1} requests are waiting (the limit is {self.waiting_limit})")
            self._outstanding += 1
        self._jobs.put(job)

    async def call(self, fn: Callable[[], object]):
        """Run ``fn`` on the worker thread and await its result (or its exception)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def deliver(setter, value) -> None:
            if not future.done():
                setter(value)

        def job() -> None:
            try:
                result = fn()
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting request
                post_to_loop(loop, deliver, future.set_exception, err)
            else:
                post_to_loop(loop, deliver, future.set_result, result)

        self.submit(job)
        return await future

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the running job; queued jobs still run first."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a job reports its own errors; this only keeps the worker alive
                logger.exception("worker job failed")
            finally:
                with self._lock:
                    self._outstanding -= 1


def post_to_loop(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """``loop.call_soon_threadsafe`` that tolerates a loop already closed (server shutting down)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        logger.debug("event loop closed; result dropped")
