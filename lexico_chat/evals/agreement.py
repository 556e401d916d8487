"""`lexico-chat eval agreement`: how closely Lexico's next-token distributions follow the full cache's.

The text is fed teacher-forced in chunks through a full cache and one LexicoCache per sparsity in
lockstep (chunk by chunk, so only one chunk of logits per cache is alive at a time). At every
position t = 0..T-1:

* greedy agreement: argmax of Lexico's logits == argmax of the full cache's logits;
* KL(full || lexico) = Σ_v p_full(v) · (log p_full(v) - log p_lexico(v)), in nats, in float64.

Each row reports the fraction of agreeing positions and the mean KL over all T positions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from lexico_chat.config import CacheConfig
from lexico_chat.engine.options import DEFAULT_PREFILL_CHUNK
from lexico_chat.output import emit

__all__ = ["agreement_eval", "chunk_statistics", "register", "run"]

DEFAULT_SPARSITIES = (4, 8, 16)


def chunk_statistics(reference: torch.Tensor, logits: torch.Tensor) -> tuple[int, float]:
    """Agreeing positions and summed KL(reference || logits) of one chunk.

    Parameters
    ----------
    reference, logits : (t, vocab) float logits of the same positions.

    Returns
    -------
    (count of positions whose argmax agree, sum over positions of the KL in nats as a float).
    """
    agree = int((reference.argmax(-1) == logits.argmax(-1)).sum())
    log_p = torch.log_softmax(reference.double(), dim=-1)
    log_q = torch.log_softmax(logits.double(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (t,)
    return agree, float(kl.sum())


def agreement_eval(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    dictionary,
    sparsities: tuple[int, ...] = DEFAULT_SPARSITIES,
    *,
    config: CacheConfig | None = None,
    chunk_size: int = DEFAULT_PREFILL_CHUNK,
    progress: Callable[[int], object] | None = None,
) -> dict:
    """Greedy agreement and mean KL(full || lexico) per sparsity over (1, T) ``input_ids``; each LexicoCache
    is ``config`` (default settings when None) at one of ``sparsities``.

    Returns
    -------
    ``{"tokens": T, "rows": [{"sparsity", "agreement", "kl", "kv_fraction"}, ...]}``; kv_fraction as every
    command reports it (``lexico_chat.memory``, end of text).
    """
    from transformers import DynamicCache

    from lexico_chat.cache import LexicoCache
    from lexico_chat.evals.harness import attention_restored

    total = input_ids.shape[1]
    agree, kl = [0] * len(sparsities), [0.0] * len(sparsities)
    with attention_restored(model), torch.inference_mode():
        # "lexico" attention serves the DynamicCache with stock sdpa (its keys carry no Lexico layer)
        config = config or CacheConfig()
        caches = [LexicoCache.from_model(model, dictionary, config.replace(sparsity=s)) for s in sparsities]
        full_cache = DynamicCache(config=model.config)
        for start in range(0, total, chunk_size):
            chunk = input_ids[:, start : start + chunk_size]
            reference = model(input_ids=chunk, past_key_values=full_cache, use_cache=True).logits[0].float()
            for i, cache in enumerate(caches):
                logits = model(input_ids=chunk, past_key_values=cache, use_cache=True).logits[0].float()
                count, summed = chunk_statistics(reference, logits)
                agree[i], kl[i] = agree[i] + count, kl[i] + summed
            if progress is not None:
                progress(chunk.shape[1])
        rows = [
            {
                "sparsity": s,
                "agreement": agree[i] / total,
                "kl": kl[i] / total,
                "kv_fraction": caches[i].memory().kv_fraction,
            }
            for i, s in enumerate(sparsities)
        ]
    return {"tokens": int(total), "rows": rows}


def register(subparsers) -> None:
    from lexico_chat.evals.harness import add_comparison_options
    from lexico_chat.options import positive_int

    p = subparsers.add_parser("agreement", help="greedy next-token agreement and KL(full || Lexico) per sparsity")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    add_comparison_options(p, DEFAULT_SPARSITIES, plot=False)
    p.add_argument("--max-tokens", type=positive_int, default=2048, help="tokens of the text used (default 2048)")
    p.add_argument("--chunk", type=positive_int, default=256, help="tokens per forward (default 256)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lexico_chat.evals.harness import check_sparsities, load_text_ids, seed_everything
    from lexico_chat.lookup import find_dictionary
    from lexico_chat.models import load_model
    from lexico_chat.options import cache_config
    from lexico_chat.progress import ProgressBar
    from lexico_chat.textfile import read_text

    config = cache_config(args)
    seed_everything(args.seed)
    text = read_text(args.text)
    loaded = load_model(args.model, device=args.device)
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, args.dictionary)
    sparsities = check_sparsities(args.sparsity, dictionary)
    ids = load_text_ids(loaded.tokenizer, text, args.max_tokens, loaded.dims.max_positions)
    with ProgressBar(ids.shape[1], "agreement", unit="tok") as bar:
        result = agreement_eval(
            loaded.model,
            ids.to(next(loaded.model.parameters()).device),
            dictionary,
            tuple(sparsities),
            config=config,
            chunk_size=args.chunk,
            progress=bar.stage(f"s={' '.join(map(str, sparsities))}"),
        )
    emit(result, args.json)
    return 0
