"""Progress bars on stderr for long commands: the one place that builds a tqdm bar.

``ProgressBar`` is one bar over a known total whose description names the current stage (the evals:
``bar.stage(name)`` returns the per-chunk ``update``). ``StageBar`` adapts it to the trainer's
``(stage, done, total)`` callbacks, opening a new bar whenever the stage or its total changes.
``FractionBar`` shows first-run training's overall progress events (fraction, stage, ETA) as one bar.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

from lexico_chat.units import duration

__all__ = ["FractionBar", "ProgressBar", "StageBar"]


class ProgressBar:
    """One tqdm bar on stderr over ``total`` units, described as ``desc`` or ``desc: stage``.

    Use as a context manager (closed on exit) or call ``close()``; ``disable`` hides it (as does a
    closed or missing stderr).
    """

    def __init__(self, total: int, desc: str, unit: str = "it", *, disable: bool = False) -> None:
        self.desc = desc
        self.bar = tqdm(
            total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable or not sys.stderr, dynamic_ncols=True
        )

    def stage(self, name: str) -> Callable[[int], None]:
        """Describe the bar as ``desc: name``; returns ``update(n)`` for the stage's units."""
        self.describe(f"{self.desc}: {name}")
        return self.update

    def describe(self, text: str, refresh: bool = True) -> None:
        self.bar.set_description(text, refresh=refresh)

    def update(self, n: int) -> None:
        self.bar.update(n)

    @property
    def done(self) -> float:
        return self.bar.n

    @property
    def total(self) -> float | None:
        return self.bar.total

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StageBar:
    """``(stage, done, total)`` callback: one ``ProgressBar`` per stage prefix (the text before " rre")."""

    def __init__(self, disable: bool = False) -> None:
        self.bar: ProgressBar | None = None
        self.key = ""
        self.disable = disable

    def __call__(self, stage: str, done: int, total: int) -> None:
        key = stage.split(" rre")[0]
        if self.bar is None or key != self.key or total != self.bar.total:
            self.close()
            self.bar = ProgressBar(total, key, disable=self.disable)
            self.key = key
        self.bar.describe(stage, refresh=False)
        self.bar.update(done - self.bar.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class FractionBar:
    """Events with ``fraction`` (0..1), ``stage`` and ``eta_s`` (``engine.startup.TrainingProgress``) as one
    bar in tenths of a percent, the stage and the estimated time left in its description."""

    def __init__(self, desc: str, disable: bool = False) -> None:
        self.bar = ProgressBar(1000, desc, unit="‰", disable=disable)

    def __call__(self, event) -> None:
        eta = "" if event.eta_s is None else f" · about {duration(event.eta_s)} left"
        self.bar.describe(f"{self.bar.desc}: {event.stage}{eta}", refresh=False)
        self.bar.update(max(0, round(event.fraction * 1000) - self.bar.done))

    def close(self) -> None:
        self.bar.close()
