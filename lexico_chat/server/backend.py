"""``Backend``: what the server serves, one loaded model and dictionary, and the factory of empty
ChatSessions that share them. ``load_backend`` is the only place the server loads the engine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backend", "load_backend", "make_backend"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """model_id : the id ``/v1/models`` lists and requests name (its last path part is accepted too).
    new_session : returns an empty ChatSession on the shared model and dictionary.
    info : fixed facts for the stats endpoint (device, cache kind, sparsity, atoms, dictionary bytes).
    """

    model_id: str
    new_session: Callable[[], object]
    info: dict = field(default_factory=dict)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.model_id, self.model_id.rsplit("/", 1)[-1])))


def make_backend(loaded, options, dictionary=None) -> Backend:
    """A Backend on an already loaded model (``LoadedModel``) with ``options`` (``SessionOptions``) and the
    dictionary every session shares (resolved from ``options`` once when None)."""
    from lexico_chat.engine.caches import resolve_dictionary
    from lexico_chat.engine.session import ChatSession

    if dictionary is None:
        dictionary = resolve_dictionary(loaded, options)

    def new_session():
        return ChatSession(loaded, options, dictionary=dictionary)

    probe = new_session().stats()  # fails here, before serving, if the options do not fit the model
    info = {
        "model_id": loaded.model_id,
        "device": probe.device,
        "cache": probe.cache,
        "sparsity": probe.sparsity,
        "atoms": probe.atoms,
        "dictionary_bytes": probe.dictionary_bytes,
        "max_positions": probe.max_positions,
    }
    return Backend(loaded.model_id, new_session, info)


def load_backend(options) -> Backend:
    """Load the model and dictionary ``options`` name (slow: reads the weights) and make the Backend."""
    from lexico_chat.engine.caches import resolve_dictionary
    from lexico_chat.models import load_model

    if options.cache.lexico and options.dictionary:
        from lexico_chat.dictionary import LexicoDictionary

        LexicoDictionary.load(options.dictionary)  # a bad file fails before the slow model load
    loaded = load_model(options.model, device=options.device)
    dictionary = resolve_dictionary(loaded, options)
    logger.info("serving %s", loaded.model_id)
    return make_backend(loaded, options, dictionary)
