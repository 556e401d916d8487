"""What a UI shows while the engine starts, without importing torch: the line the loading thread last
reported, and the first-run dictionary training offer (estimate, disk, ``train``) with its progress events
and cancellation. ``lexico_chat.engine.first_run`` makes the offers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lexico_chat.engine.types import ChatEngine

__all__ = ["LoadingStatus", "TrainingCancelled", "TrainingOffer", "TrainingProgress"]


class LoadingStatus:
    """Called by the loading thread with what it does now (``status("converting …")``); a UI's timer reads
    ``line()``. A plain attribute swap, so no lock is needed."""

    def __init__(self, text: str = "loading model…") -> None:
        self.text = text
        self.started = time.monotonic()

    def __call__(self, text: str) -> None:
        self.text = text

    def line(self) -> str:
        """``converting … (first run only)… 12 s``."""
        return f"{self.text} {time.monotonic() - self.started:.0f} s"


@dataclass(frozen=True)
class TrainingProgress:
    """Where a training run is: ``fraction`` of the estimated work done (0..1), what it is doing, seconds
    since it (re)started and the seconds still to go at the pace so far (None until it can tell)."""

    fraction: float
    stage: str
    elapsed_s: float
    eta_s: float | None


class TrainingCancelled(Exception):
    """The run stopped because its ``cancel`` event was set; finished layers stay checkpointed."""


class TrainingOffer(Protocol):
    """A dictionary that can be trained now for the model that is already loaded.

    ``summary`` says how (vectors, rounds, device, estimated time); ``estimate_s`` and ``disk_bytes`` are the
    figures behind it; ``layers_done`` of ``layers`` are already fitted from an earlier, interrupted run.
    """

    model_id: str
    atoms: int
    summary: str
    estimate_s: float
    disk_bytes: int
    layers: int
    layers_done: int
    result: str  # after ``train``: the held-out errors of the new dictionary, one line

    def train(
        self, progress: Callable[[TrainingProgress], None] | None = None, cancel: threading.Event | None = None
    ) -> ChatEngine:
        """Train (resuming any earlier run), save the dictionary where the lookup finds it, and open the chat.

        Raises TrainingCancelled when ``cancel`` is set; run ``train`` again to resume."""
