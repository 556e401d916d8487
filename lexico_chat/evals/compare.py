"""`lexico-chat eval compare`: perplexity against KV bytes for Lexico, KIVI and eviction caches.

On one text and model, every method predicts each token teacher-forced while the text is fed in
chunks (``chunked_nll``), so most tokens are predicted from context the cache holds compressed:

* ``full``: transformers' DynamicCache (kv_fraction 1 by definition: an fp16 cache);
* ``lexico``: LexicoCache at each sparsity s (s <= head_dim and <= atoms);
* ``kivi``: ``KiviCache`` at 2 and 4 bits (keys per channel, values per token, fp16 residual);
* ``eviction``: ``EvictionCache`` (sink + recent window, fp16) with the window chosen so that its bytes
  at the end of the text match each Lexico row's (fed ``eviction_chunk`` tokens at a time, so each
  token sees at most ``eviction_chunk - 1`` tokens beyond the budget).

``kv_fraction`` is measured at the end of the text: bytes held / fp16 bytes of all tokens seen, the
one count of ``lexico_chat.memory`` for every method (full-precision tokens are held in 16 bits by all
of them, Lexico's buffer included); the dictionaries (a fixed cost shared by all texts) are not counted.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lexico_chat.config import CacheConfig
from lexico_chat.engine.options import DEFAULT_PREFILL_CHUNK
from lexico_chat.evals.perplexity import chunked_nll, perplexity
from lexico_chat.output import emit

__all__ = ["CompareSettings", "compare_eval", "eviction_window", "plot_compare", "register", "run"]

DEFAULT_SPARSITIES = (4, 8, 16, 24, 32)


@dataclass(frozen=True)
class CompareSettings:
    """What ``compare_eval`` runs.

    sparsities : Lexico s values; kivi_bits : KIVI code widths.
    cache : the Lexico settings (buffer, window, dtypes; its sparsity is replaced by each of ``sparsities``).
    residual, group : KIVI residual window and key group (tokens); value group is ``group`` channels.
    sink : eviction sink tokens. chunk_size, eviction_chunk : tokens per forward call.
    """

    sparsities: tuple[int, ...] = DEFAULT_SPARSITIES
    kivi_bits: tuple[int, ...] = (2, 4)
    cache: CacheConfig = field(default_factory=CacheConfig)
    residual: int = 128
    group: int = 32
    sink: int = 4
    chunk_size: int = DEFAULT_PREFILL_CHUNK
    eviction_chunk: int = 32

    def __post_init__(self) -> None:
        small = {k: getattr(self, k) for k in ("group", "chunk_size", "eviction_chunk") if getattr(self, k) < 1}
        if small:
            raise ValueError(f"{', '.join(small)} must be >= 1, got {small}")
        negative = {k: getattr(self, k) for k in ("residual", "sink") if getattr(self, k) < 0}
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0, got {negative}")

    def kivi_cache(self, model_config, bits: int):
        """An empty ``KiviCache`` at ``bits`` bits (``group`` tokens per key group, ``group`` channels per value
        group, ``residual`` fp16 tokens) for the model of ``model_config``."""
        from lexico_chat.baselines import KiviCache

        g = self.group
        return KiviCache(model_config, bits=bits, group=g, value_group=g, residual=self.residual)

    def eviction_cache(self, model_config, window: int):
        """An empty ``EvictionCache`` keeping ``sink`` first and ``window`` most recent tokens in fp16."""
        from lexico_chat.baselines import EvictionCache

        return EvictionCache(model_config, sink=self.sink, window=window)


def eviction_window(kv_fraction: float, tokens: int, sink: int) -> int:
    """Recent-window size whose sink + window fp16 tokens hold ``kv_fraction`` of ``tokens`` tokens (>= 1)."""
    return max(1, round(kv_fraction * tokens) - sink)


def compare_eval(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    dictionary,
    settings: CompareSettings | None = None,
    progress: Callable[[str], Callable[[int], object]] | None = None,
) -> dict:
    """Perplexity and end-of-text kv_fraction of every method on (1, T) ``input_ids``.

    Parameters
    ----------
    model : causal LM (its attention implementation is restored afterwards).
    input_ids : (1, T) int64, T >= 2.
    dictionary : LexicoDictionary for ``model``; settings : CompareSettings (default: the defaults).
    progress : ``progress(stage_name)`` returns a callable taking each chunk's token count.

    Returns
    -------
    ``{"tokens": T, "rows": [{"method", "setting", "kv_fraction", "ppl"}, ...]}``: full, lexico (one
    per sparsity), kivi (one per bit width), eviction (one per lexico row, matched bytes).
    """
    from transformers import DynamicCache

    from lexico_chat.cache import LexicoCache
    from lexico_chat.evals.harness import attention_restored, kv_fraction

    settings = settings or CompareSettings()
    stage = progress or (lambda name: None)
    tokens, config = input_ids.shape[1], model.config

    def measure(method: str, setting: str, cache, fraction: Callable, chunk: int = settings.chunk_size) -> dict:
        nll = chunked_nll(model, input_ids, cache, chunk_size=chunk, progress=stage(f"{method} {setting}"))
        return {"method": method, "setting": setting, "kv_fraction": float(fraction(cache)), "ppl": perplexity(nll)}

    with attention_restored(model):
        model.set_attn_implementation("sdpa")
        rows = [measure("full", "fp16", DynamicCache(config=config), lambda cache: 1.0)]
        for s in settings.sparsities:
            cache = LexicoCache.from_model(model, dictionary, settings.cache.replace(sparsity=s))
            rows.append(measure("lexico", f"s={s} N={dictionary.meta.atoms}", cache, kv_fraction))
        model.set_attn_implementation("sdpa")
        for bits in settings.kivi_bits:
            rows.append(measure("kivi", f"{bits}-bit", settings.kivi_cache(config, bits), kv_fraction))
        for target in [row for row in rows if row["method"] == "lexico"]:
            window = eviction_window(target["kv_fraction"], tokens, settings.sink)
            cache = settings.eviction_cache(config, window)
            setting = f"sink={settings.sink} window={window} (as lexico {target['setting'].split()[0]})"
            rows.append(measure("eviction", setting, cache, kv_fraction, settings.eviction_chunk))
    return {"tokens": int(tokens), "rows": rows}


def plot_compare(result: dict, path: str) -> None:
    """Perplexity against KV bytes (% of fp16), one line and marker set per method, saved as PNG."""
    from lexico_chat.evals.harness import new_figure, save_figure

    figure = new_figure(figsize=(6.4, 4.4))
    axes = figure.add_subplot()
    styles = {"full": "k*", "lexico": "o-", "kivi": "s-", "eviction": "^--"}
    for method, style in styles.items():
        rows = sorted((r for r in result["rows"] if r["method"] == method), key=lambda r: r["kv_fraction"])
        if rows:
            axes.plot([100 * r["kv_fraction"] for r in rows], [r["ppl"] for r in rows], style, label=method, ms=7)
    full = [r["ppl"] for r in result["rows"] if r["method"] == "full"]
    if full:
        axes.axhline(full[0], color="k", lw=0.6, ls=":")
    ppl = [r["ppl"] for r in result["rows"] if math.isfinite(r["ppl"])]
    if ppl and max(ppl) / min(ppl) > 3:
        axes.set_yscale("log")
    axes.set_xlabel("KV cache bytes (% of fp16)")
    axes.set_ylabel("perplexity")
    axes.set_title(f"perplexity vs KV memory ({result['tokens']} tokens)")
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, path)


def register(subparsers) -> None:
    from lexico_chat.evals.harness import add_comparison_options
    from lexico_chat.options import positive_int

    p = subparsers.add_parser("compare", help="perplexity vs KV bytes: full, Lexico, KIVI 2/4-bit, eviction")
    p.add_argument("--text", required=True, help="UTF-8 text file")
    add_comparison_options(p, DEFAULT_SPARSITIES)
    p.add_argument("--max-tokens", type=positive_int, default=4096, help="tokens of the text used (default 4096)")
    p.add_argument(
        "--chunk",
        type=positive_int,
        default=DEFAULT_PREFILL_CHUNK,
        help="tokens per forward (default: the chat's prefill chunk)",
    )
    p.add_argument("--residual", type=int, default=128, help="KIVI fp16 residual tokens (default 128)")
    p.add_argument("--sink", type=int, default=4, help="eviction sink tokens (default 4)")
    p.add_argument("--eviction-chunk", type=positive_int, default=32, help="eviction tokens per forward (default 32)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lexico_chat.errors import LexicoError
    from lexico_chat.evals.harness import check_sparsities, load_text_ids, seed_everything
    from lexico_chat.lookup import find_dictionary
    from lexico_chat.models import load_model
    from lexico_chat.options import cache_config
    from lexico_chat.progress import ProgressBar
    from lexico_chat.textfile import read_text

    if args.residual < 0 or args.sink < 0:
        raise LexicoError(f"--residual and --sink must be >= 0, got {args.residual}, {args.sink}")
    cache = cache_config(args)
    seed_everything(args.seed)
    text = read_text(args.text)
    loaded = load_model(args.model, device=args.device)
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, args.dictionary)
    explicit = args.sparsity != list(DEFAULT_SPARSITIES)
    sparsities = check_sparsities(args.sparsity, dictionary, drop_invalid=not explicit)
    ids = load_text_ids(loaded.tokenizer, text, args.max_tokens, loaded.dims.max_positions)
    settings = CompareSettings(
        sparsities=tuple(sparsities),
        cache=cache,
        residual=args.residual,
        sink=args.sink,
        chunk_size=args.chunk,
        eviction_chunk=args.eviction_chunk,
    )
    runs = 1 + 2 * len(sparsities) + len(settings.kivi_bits)
    with ProgressBar(runs * ids.shape[1], "compare", unit="tok") as bar:
        result = compare_eval(
            loaded.model, ids.to(next(loaded.model.parameters()).device), dictionary, settings, bar.stage
        )
    if args.plot:
        plot_compare(result, args.plot)
    emit(result, args.json)
    return 0
