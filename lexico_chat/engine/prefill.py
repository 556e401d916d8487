"""Chunked prefill: feed a long prompt through the model a chunk at a time (the engine's ingest step).

With a ``LexicoCache`` the cache compresses as it goes, so peak memory is the weights, the
compressed cache, the buffer and one chunk's activations (the logits of one position only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lexico_chat.engine.options import DEFAULT_PREFILL_CHUNK

__all__ = ["prefill"]


def prefill(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    cache,
    *,
    chunk_size: int = DEFAULT_PREFILL_CHUNK,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Run ``input_ids`` through ``model`` in chunks, filling ``cache``.

    Parameters
    ----------
    model : a transformers causal LM.
    input_ids : (batch, T) int64 token ids, T >= 1, continuing whatever ``cache`` already holds.
    cache : a transformers ``Cache`` (a LexicoCache or a DynamicCache).
    chunk_size : tokens per forward call.
    progress : called with the number of tokens of each chunk once it is done (e.g. ``tqdm.update``).

    Returns
    -------
    (batch, vocab) logits of the last position, in the model's dtype.
    """
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"`input_ids` must have shape (batch, T) with T >= 1, got {tuple(input_ids.shape)}")
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}")
    logits = None
    with torch.inference_mode():
        for start in range(0, input_ids.shape[1], chunk_size):
            chunk = input_ids[:, start : start + chunk_size]
            out = model(input_ids=chunk, past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
            if progress is not None:
                progress(chunk.shape[1])
    return logits
