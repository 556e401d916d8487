"""Chat-template rendering and the stop tokens of a turn."""

from __future__ import annotations

from lexico_chat.engine.types import Message

__all__ = ["render", "stop_token_ids"]

_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


def render(tokenizer, messages: list[Message], add_generation_prompt: bool = True) -> str:
    """The conversation as the model's chat template writes it (a plain fallback for base models)."""
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=add_generation_prompt)
    bos = tokenizer.bos_token or ""
    body = "".join(f"{m.role.capitalize()}: {m.content}\n\n" for m in messages)
    return bos + body + ("Assistant:" if add_generation_prompt else "")


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
