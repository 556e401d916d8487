"""``SavedSessions``: the folder of saved conversations, ``<session_dir>/<id>.lexico`` (the ``--save``
file format). Ids match ``^[A-Za-z0-9_-]{1,64}$``, so no id can name a path outside the folder."""

from __future__ import annotations

import re
from pathlib import Path

from lexico_chat.server.errors import ApiError

__all__ = ["SESSION_ID", "SUFFIX", "SavedSessions"]

SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SUFFIX = ".lexico"


class SavedSessions:
    """Saved conversation files in ``folder`` (created on first save)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, session_id: str, must_exist: bool = False) -> Path:
        """The file of ``session_id``; 400 for an invalid id, 404 when ``must_exist`` and it does not."""
        if not isinstance(session_id, str) or not SESSION_ID.match(session_id):
            raise ApiError(
                400,
                f"session id must match {SESSION_ID.pattern} (letters, digits, _ and -, at most 64), "
                f"got {str(session_id)[:80]!r}",
                param="id",
                code="invalid_session_id",
            )
        path = self.folder / f"{session_id}{SUFFIX}"
        if must_exist and not path.is_file():
            raise ApiError(
                404, f"no saved session {session_id!r} in {self.folder}", param="id", code="session_not_found"
            )
        return path

    def for_writing(self, session_id: str) -> Path:
        """The file of ``session_id``; the save creates the folder (a failure is a SaveError naming the cause)."""
        return self.path(session_id)

    def describe(self, session_id: str) -> dict:
        stat = self.path(session_id, must_exist=True).stat()
        return {"id": session_id, "object": "lexico.session", "bytes": stat.st_size, "modified": int(stat.st_mtime)}

    def list(self) -> list[dict]:
        if not self.folder.is_dir():
            return []
        names = sorted(p.name[: -len(SUFFIX)] for p in self.folder.glob(f"*{SUFFIX}") if p.is_file())
        return [self.describe(name) for name in names if SESSION_ID.match(name)]

    def delete(self, session_id: str) -> None:
        self.path(session_id, must_exist=True).unlink()
