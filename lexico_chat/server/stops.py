"""``StopMatcher``: cut a streamed reply at the first of the request's ``stop`` strings.

Text that might be the start of a stop string is held back until the next delta decides it, so no
stop string is ever partly sent.
"""

from __future__ import annotations

__all__ = ["StopMatcher"]


class StopMatcher:
    """Feed deltas in order; ``feed`` returns what may be sent now, ``hit`` tells whether a stop string
    was found (nothing after it is ever returned), ``flush`` returns what was held back at the end."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hit = False
        self._held = ""

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return text
        self._held += text
        found = [i for i in (self._held.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            out, self._held = self._held[: min(found)], ""
            return out
        keep = self._partial_stop_length()
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(out) :]
        return out

    def flush(self) -> str:
        out, self._held = ("" if self.hit else self._held), ""
        return out

    def _partial_stop_length(self) -> int:
        """Length of the longest end of the held text that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._held)), longest, -1):
                if self._held.endswith(stop[:n]):
                    longest = n
                    break
        return longest
