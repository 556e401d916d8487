"""ChatSessions for every cache the comparison evals run: the user's ``ask_document`` path with any cache.

``full`` and ``lexico`` sessions are plain ``ChatSession``s (CacheConfig kind "full" / "lexico"), built as
the chat builds them. KIVI and eviction are no cache kind of the chat: a ``BaselineSession`` is a
ChatSession whose ``new_state`` (the one place a session makes a cache) takes a baseline cache from a
factory, so the chat template, the document prompt, the chunked prefill and the decoding are ChatSession's
own code. Only what the session reports about its cache differs (``stats()`` reads its options, which say
"full"); nothing here saves such a session.
"""

from __future__ import annotations

from collections.abc import Callable

from lexico_chat.config import CacheConfig
from lexico_chat.engine.caches import use_dense_attention
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.state import ConversationState
from lexico_chat.evals.compare import CompareSettings
from lexico_chat.models import LoadedModel

__all__ = ["BaselineSession", "METHODS", "method_session"]

METHODS = ("full", "lexico", "kivi", "eviction")


class BaselineSession(ChatSession):
    """A ChatSession whose every conversation holds ``make_cache()`` (a KIVI or eviction cache), with the
    model's attention set to sdpa (the dense attention those caches return their keys and values to).

    Parameters
    ----------
    loaded : the model; make_cache : builds an empty transformers ``Cache``; prefill_chunk : tokens per
    forward call while prefilling.
    """

    def __init__(self, loaded: LoadedModel, make_cache: Callable[[], object], prefill_chunk: int) -> None:
        self._make_cache = make_cache
        options = SessionOptions(cache=CacheConfig(kind="full"), prefill_chunk=prefill_chunk)
        super().__init__(loaded, options, dictionary=None)

    def new_state(self) -> ConversationState:
        """An empty conversation state holding a fresh cache from ``make_cache``."""
        use_dense_attention(self.loaded.model)
        return ConversationState(self._make_cache())


def method_session(
    loaded: LoadedModel, dictionary, settings: CompareSettings, method: str, value: int | None
) -> ChatSession:
    """A session of one of ``METHODS``.

    Parameters
    ----------
    loaded : the model; dictionary : its LexicoDictionary (used by ``lexico`` only).
    settings : the caches' settings (Lexico's CacheConfig, KIVI's residual and group, the eviction sink, and
        the prefill chunks: ``chunk_size`` for every method but eviction, which is fed ``eviction_chunk``
        tokens at a time so that its budget also holds while the document is read).
    method : "full", "lexico", "kivi" or "eviction"; value : lexico's sparsity, kivi's bits, eviction's
        window (None for full).
    """
    config = loaded.model.config
    if method == "full":
        options = SessionOptions(cache=CacheConfig(kind="full"), prefill_chunk=settings.chunk_size)
        return ChatSession(loaded, options, dictionary=None)
    if method == "lexico":
        cache = settings.cache.replace(sparsity=value, atoms=dictionary.meta.atoms)
        return ChatSession(loaded, SessionOptions(cache=cache, prefill_chunk=settings.chunk_size), dictionary)
    if method == "kivi":
        return BaselineSession(loaded, lambda: settings.kivi_cache(config, value), settings.chunk_size)
    if method == "eviction":
        return BaselineSession(loaded, lambda: settings.eviction_cache(config, value), settings.eviction_chunk)
    raise ValueError(f"`method` must be one of {list(METHODS)}, got {method!r}")
