"""Building SessionStats from the session's cache (bytes of the tensors held) and the process."""

from __future__ import annotations

import torch

from lexico_chat.engine.sysstats import gpu_memory, rss_bytes
from lexico_chat.engine.types import SessionStats
from lexico_chat.memory import cache_memory

__all__ = ["session_stats"]


def session_stats(session) -> SessionStats:
    """Figures of ``session`` (a ChatSession) now."""
    cache = session.cache
    memory = cache_memory(cache)
    device = session.device
    gpu_index = device.index or 0 if device.type == "cuda" else 0
    used, total = gpu_memory(gpu_index)
    allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    options = session.options
    lexico = options.cache.lexico
    return SessionStats(
        memory=memory,
        context_tokens=len(session.cached_ids),
        max_positions=session.max_positions,
        prefill_tps=session.last_prefill_tps,
        decode_tps=session.last_decode_tps,
        rss_bytes=rss_bytes(),
        gpu_used_bytes=used,
        gpu_total_bytes=total,
        torch_allocated_bytes=allocated,
        dictionary_bytes=session.dictionary.nbytes if session.dictionary is not None else 0,
        model_id=session.loaded.model_id,
        device=session.loaded.device_label,
        cache=options.cache.kind,
        sparsity=options.cache.sparsity if lexico else None,
        sparsity_label=options.cache.sparsity_label(session.dictionary.meta) if lexico else None,
        atoms=session.dictionary.meta.atoms if lexico else None,
    )
