"""Next-token choice: greedy, or temperature + nucleus (top-p) sampling with a seeded generator."""

from __future__ import annotations

import torch

from lexico_chat.engine.types import SamplingConfig

__all__ = ["next_token"]


def next_token(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token.

    Parameters
    ----------
    logits : (vocab,) float tensor of the last position.
    config : temperature 0 → argmax; otherwise softmax(logits / T) restricted to the smallest set of
        tokens whose probability reaches ``top_p``.
    generator : CPU generator seeded from ``config.seed`` (sampling runs on CPU for reproducibility).

    Returns
    -------
    () int64 tensor on CPU.
    """
    logits = logits.float().cpu()
    if config.temperature <= 0:
        return logits.argmax()
    probs = torch.softmax(logits / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < config.top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return torch.multinomial(probs, 1, generator=generator)[0]
