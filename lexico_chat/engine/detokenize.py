"""Incremental detokenisation: the text of a growing token list, a few tokens of work per token.

Decoding the whole reply after every token is quadratic in its length. ``IncrementalDecoder`` decodes
only the tokens since the last emitted piece, with the tokens of the piece before as context (so
tokenizers that drop or merge a leading space when a slice is decoded alone still give the same text),
and holds back a piece that ends in an incomplete UTF-8 sequence ("\\ufffd") until it completes.
"""

from __future__ import annotations

__all__ = ["IncrementalDecoder"]


class IncrementalDecoder:
    """Text deltas of a token stream.

    Parameters
    ----------
    tokenizer : a transformers tokenizer.
    skip_special_tokens : passed to ``tokenizer.decode``.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the context tokens of the next decode
        self._read = 0  # tokens whose text is already in ``text``

    def push(self, token: int) -> str:
        """Add one token; returns the text it completes ("" while a character is incomplete)."""
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=self.skip)
        after = decode(self.ids[self._prefix :], skip_special_tokens=self.skip)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """The full text of every token pushed (one decode of the whole list)."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=self.skip)
