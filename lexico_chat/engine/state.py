"""``ConversationState``: what the model has seen of one conversation, swapped as a whole.

The cache, the token ids it holds, the text those ids render, and the logits of the last position
(None after a resume: the next turn always feeds at least one new token). A turn builds on the state;
a failed prefill or a resume replaces it in one assignment, so the session never holds a cache that
disagrees with its ids or text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConversationState"]


@dataclass
class ConversationState:
    """cache : a transformers ``Cache`` (LexicoCache or DynamicCache); ids : the token ids it holds, in
    order; text : the rendered conversation those ids encode; logits : (vocab,) of the last position."""

    cache: object
    ids: list[int] = field(default_factory=list)
    text: str = ""
    logits: object | None = None
