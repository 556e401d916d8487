"""User-facing errors: one clear line, no traceback."""

from __future__ import annotations

__all__ = ["LexicoError", "MissingDictionaryError", "SaveError"]


class LexicoError(Exception):
    """A mistake in what the user asked for (bad path, mismatched file, value out of range).

    The CLI prints ``str(err)`` on one line to stderr and exits with code 2; the TUI shows it as a
    notification. Library code raises it only for conditions a user can fix.
    """


class MissingDictionaryError(LexicoError):
    """No dictionary file for ``model_id`` with ``atoms`` atoms in any of the folders searched.

    ``str(err)`` is the one-line ``message`` (where it looked, the estimate and the command); the fields let
    a UI show the pieces without parsing it.

    Attributes
    ----------
    model_id : str
        The model the dictionary is for.
    atoms : int
        The number of atoms asked for.
    command : str
        The exact ``lexico-chat train-dictionary ...`` command that trains the missing dictionary.
    estimate : str
        How long that training takes on this device, from a timed probe ("" where none was made).
    offer : lexico_chat.engine.startup.TrainingOffer or None
        Training that can start now on the model already loaded (the TUI's "Train now"), or None.
    """

    def __init__(
        self, message: str, *, model_id: str, atoms: int, command: str, estimate: str, offer: object | None = None
    ) -> None:
        super().__init__(message)
        self.model_id, self.atoms, self.command, self.estimate = model_id, atoms, command, estimate
        self.offer = offer


class SaveError(LexicoError):
    """A file could not be written (no permission, disk full, a folder in the way): the message names the
    path and the cause. What was being saved is still in memory, so a UI can offer another path."""
