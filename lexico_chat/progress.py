"""Progress bars on stderr for long commands (tqdm), driven by (stage, done, total) callbacks."""

from __future__ import annotations

import sys

from tqdm import tqdm


class StageBar:
    """One tqdm bar per stage name prefix; call with (stage, done, total)."""

    def __init__(self, disable: bool = False) -> None:
        self.bar: tqdm | None = None
        self.key = ""
        self.disable = disable or not sys.stderr

    def __call__(self, stage: str, done: int, total: int) -> None:
        key = stage.split(" rre")[0]
        if self.bar is None or key != self.key or total != self.bar.total:
            self.close()
            self.bar = tqdm(total=total, desc=key, file=sys.stderr, disable=self.disable, dynamic_ncols=True)
            self.key = key
        self.bar.set_description(stage, refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
