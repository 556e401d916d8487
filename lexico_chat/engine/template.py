"""Chat-template rendering, tokenisation that keeps message text plain, and the stop tokens of a turn.

Message text comes from anyone: the user, a document, an API client. Tokenised with special tokens enabled,
``<|im_start|>system`` typed inside a message would become a real system turn. ``render_conversation``
therefore notes where each message's text lies in the rendered conversation (by rendering it once more with
a placeholder per message), and ``Rendered.encode`` tokenises the messages that contain special-token strings
with ``split_special_tokens=True``: there such strings are plain text, while the template's own markup keeps
its special tokens. A conversation without such strings is tokenised in one call, exactly as before.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from lexico_chat.engine.types import Message
from lexico_chat.errors import LexicoError

__all__ = ["Rendered", "render", "render_conversation", "special_strings", "stop_token_ids"]

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """The conversation as the model's chat template writes it (a plain fallback for base models)."""
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=add_generation_prompt)
    bos = tokenizer.bos_token or ""
    body = "".join(f"{m.role.capitalize()}: {m.content}\n\n" for m in messages)
    return bos + body + ("Assistant:" if add_generation_prompt else "")


def special_strings(tokenizer) -> set[str]:
    """The strings the tokenizer turns into special tokens when they appear in text."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {token.content for token in added.values() if getattr(token, "special", False)}
    return {s for s in found | set(getattr(tokenizer, "all_special_tokens", None) or ()) if s}


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation. text : what the chat template wrote; protected : (start, end) character
    spans of the message texts that contain special-token strings (tokenised as plain text)."""

    text: str
    protected: tuple[tuple[int, int], ...] = ()

    def encode(self, tokenizer, start: int = 0, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text[start:]``: the template's markup with its special tokens, protected message
        text with special-token strings as plain text; ``add_special_tokens`` adds the tokenizer's own
        (e.g. BOS) around the whole."""
        cuts = [(max(a, start), b) for a, b in self.protected if b > start]
        if not cuts:
            return list(tokenizer(self.text[start:], add_special_tokens=add_special_tokens)["input_ids"])
        ids, pos = [], start
        for a, b in cuts:
            ids += _ids(tokenizer, self.text[pos:a], plain=False) + _ids(tokenizer, self.text[a:b], plain=True)
            pos = b
        ids += _ids(tokenizer, self.text[pos:], plain=False)
        return _with_special_tokens(tokenizer, ids) if add_special_tokens else ids


def render_conversation(tokenizer, messages: list[Message], add_generation_prompt: bool = True) -> Rendered:
    """``render`` plus the spans of message texts that hold special-token strings. Raises LexicoError when such
    a message cannot be located because the template rewrites message text."""
    text = render(tokenizer, messages, add_generation_prompt)
    specials = special_strings(tokenizer)
    risky = [i for i, m in enumerate(messages) if any(s in m.content for s in specials)]
    if not risky:
        return Rendered(text)
    spans = _content_spans(tokenizer, messages, text, add_generation_prompt)
    if spans is None:
        content = messages[risky[0]].content
        token = min((s for s in specials if s in content), key=content.index)  # the first one in the text
        raise LexicoError(
            f"a message contains {token!r}, a control token of this model, and the model's chat template changes "
            "message text, so it cannot be kept as plain text; remove it from the message"
        )
    return Rendered(text, tuple(spans[i] for i in risky))


def _content_spans(tokenizer, messages: list[Message], text: str, add_generation_prompt: bool):
    """(start, end) of each message's text in ``text``, found by rendering a placeholder in place of every
    message and matching the markup between them; None when the text does not line up."""
    tag = uuid.uuid4().hex
    slots = [f"lexicoslot{tag}n{i}x" for i in range(len(messages))]
    skeleton = render(tokenizer, [Message(m.role, slot) for m, slot in zip(messages, slots)], add_generation_prompt)
    pieces, rest = [], skeleton
    for slot in slots:
        head, found, rest = rest.partition(slot)
        if not found:
            return None
        pieces.append(head)
    pieces.append(rest)
    spans, pos = [], 0
    for i, message in enumerate(messages):
        if not text.startswith(pieces[i], pos):
            return None
        pos += len(pieces[i])
        fits = [c for c in (message.content, message.content.strip()) if _fits(text, c, pos, pieces[i + 1])]
        if not fits:
            return None
        spans.append((pos, pos + len(fits[0])))
        pos += len(fits[0])
    return spans if pos + len(pieces[-1]) == len(text) else None


def _fits(text: str, content: str, pos: int, markup: str) -> bool:
    return text.startswith(content, pos) and text.startswith(markup, pos + len(content))


def _ids(tokenizer, text: str, plain: bool) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"])


def _with_special_tokens(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` with the tokens the tokenizer adds around any text (BOS, ...), found on a probe text."""
    marked = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for i in range(len(marked) - len(bare) + 1):
        if marked[i : i + len(bare)] == bare:
            return marked[:i] + ids + marked[i + len(bare) :]
    return ids


def stop_token_ids(tokenizer, generation_config=None) -> set[int]:
    """EOS ids of the tokenizer and generation config, plus the template's end-of-turn tokens."""
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[tok] for tok in _END_OF_TURN if tok in vocab)
    return ids
