"""JSON bodies and headers of chat completions: OpenAI's fields plus the conversation's KV figures."""

from __future__ import annotations

__all__ = ["completion_body", "lexico_figures", "lexico_headers", "usage_body"]


def usage_body(usage) -> dict:
    """OpenAI ``usage`` from a TurnUsage; ``cached_tokens`` are the prompt tokens reused from the cache."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def lexico_figures(conversation: str, stats, finished=None) -> dict:
    """The ``lexico`` field: the conversation's id and its cache figures (after the turn when finished)."""
    body = {"conversation": conversation}
    if stats is not None:
        body.update(
            kv_bytes=stats.kv_bytes,
            fp16_bytes=stats.fp16_bytes,
            kv_fraction=stats.kv_fraction,
            allocated_bytes=stats.allocated_bytes,
            context_tokens=stats.context_tokens,
            tokens_compressed=stats.tokens_compressed,
        )
    if finished is not None:
        body["evicted"] = list(finished.evicted)
    return body


def lexico_headers(conversation: str, stats) -> dict[str, str]:
    """``x-lexico-conversation``, ``x-lexico-kv-bytes`` and, once something is cached, ``x-lexico-kv-fraction``
    (bytes 0 and no fraction for a conversation with nothing cached yet)."""
    kv, fraction = (stats.kv_bytes, stats.kv_fraction) if stats is not None else (0, None)
    headers = {"x-lexico-conversation": conversation, "x-lexico-kv-bytes": str(kv)}
    if fraction is not None:
        headers["x-lexico-kv-fraction"] = f"{fraction:.6f}"
    return headers


def completion_body(generation, model: str, finished) -> dict:
    """A non-streamed ``chat.completion``."""
    return {
        "id": generation.id,
        "object": "chat.completion",
        "created": generation.created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": finished.text, "refusal": None},
                "logprobs": None,
                "finish_reason": finished.finish_reason,
            }
        ],
        "usage": usage_body(finished.usage),
        "system_fingerprint": None,
        "lexico": lexico_figures(finished.conversation, finished.stats, finished),
    }
