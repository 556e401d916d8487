"""`lexico-chat eval niah`: needle in a haystack through the chat template, full cache vs Lexico.

For each haystack length L (tokens) and depth d in [0, 1], the sentence "The special magic number
is N." (N: five digits drawn from ``--seed``) is planted at depth d of the haystack text truncated
(or repeated) to L tokens in all, snapped back to the end of the sentence before it. The document
goes to ``ChatSession.ask_document`` with the question below, exactly as a user's document would;
the reply is greedy, and the needle counts as found when N appears in it as a whole number.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from lexico_chat.config import CacheConfig
from lexico_chat.errors import LexicoError
from lexico_chat.output import emit

__all__ = ["NEEDLE", "QUESTION", "needle_found", "needle_number", "niah_eval", "plant_needle", "plot_niah"]

logger = logging.getLogger(__name__)

NEEDLE = "The special magic number is {number}."
QUESTION = "What is the special magic number mentioned in the document? Answer with the number only."
DEFAULT_LENGTHS = (1024, 2048, 4096)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_SPARSITIES = (8, 16)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s")


def needle_number(seed: int, trial: int) -> int:
    """Five-digit number of trial ``trial`` under ``seed`` (same seed, same numbers)."""
    return random.Random(seed * 1_000_003 + trial).randint(10_000, 99_999)


def needle_found(reply: str, number: int) -> bool:
    """Whether ``number`` appears in ``reply`` as a whole number (thousands separators allowed)."""
    digits = re.sub(r"(?<=\d)[,\u202f ](?=\d{3}\b)", "", reply)
    return re.search(rf"(?<!\d){number}(?!\d)", digits) is not None


def plant_needle(tokenizer, haystack: str, length: int, depth: float, needle: str) -> str:
    """The haystack cut to ``length`` tokens in all with ``needle`` planted at ``depth``.

    Parameters
    ----------
    tokenizer : callable ``tokenizer(text, add_special_tokens=False)["input_ids"]`` with ``decode(ids)``.
    haystack : filler text (repeated when shorter than ``length`` tokens).
    length : tokens of haystack + needle; depth : 0 (start) .. 1 (end), as a fraction of the haystack.

    Returns
    -------
    The document text; the needle follows the last sentence end at or before the depth's token.
    """
    if not 0.0 <= depth <= 1.0:
        raise LexicoError(f"--depths must be in [0, 1], got {depth}")
    hay = tokenizer(haystack, add_special_tokens=False)["input_ids"]
    budget = length - len(tokenizer(" " + needle, add_special_tokens=False)["input_ids"])
    if budget < 1:
        raise LexicoError(f"--lengths must exceed the needle's length in tokens, got {length}")
    if not hay:
        raise LexicoError("the haystack holds no tokens")
    hay = (hay * math.ceil(budget / len(hay)))[:budget]
    cut = round(depth * budget)
    before, after = tokenizer.decode(hay[:cut]), tokenizer.decode(hay[cut:])
    ends = list(_SENTENCE_END.finditer(before))
    if 0 < cut < budget and ends:
        k = ends[-1].end()
        before, after = before[:k], before[k:] + after
    return " ".join(part for part in (before.rstrip(), needle, after.lstrip()) if part)


def _chat_sessions(loaded, dictionary, config: CacheConfig) -> Callable:
    """``make(method, sparsity)`` → a ChatSession with a full cache or a LexicoCache of ``config`` at ``sparsity``."""
    from lexico_chat.engine.options import SessionOptions
    from lexico_chat.engine.session import ChatSession

    def make(method: str, sparsity: int | None):
        if method == "full":
            return ChatSession(loaded, SessionOptions(cache=CacheConfig(kind="full")), dictionary=None)
        cache = config.replace(sparsity=sparsity, atoms=dictionary.meta.atoms)
        return ChatSession(loaded, SessionOptions(cache=cache), dictionary=dictionary)

    return make


def niah_eval(
    loaded,
    haystack: str,
    dictionary,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    sparsities: Sequence[int] = DEFAULT_SPARSITIES,
    *,
    config: CacheConfig | None = None,
    max_new_tokens: int = 16,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
    make_session: Callable | None = None,
) -> dict:
    """Run every (length, depth) trial with the full cache and Lexico at each sparsity.

    ``make_session(method, sparsity)`` builds a session with ``clear()`` and ``ask_document(path,
    question, sampling)`` (default: ChatSession on ``loaded``); ``progress`` gets 1 per trial.

    Returns
    -------
    ``{"rows": [{"length", "depth", "method", "setting", "found", "reply"}, ...]}`` in trial order.
    """
    from lexico_chat.engine.types import SamplingConfig
    from lexico_chat.evals.harness import attention_restored

    make = make_session or _chat_sessions(loaded, dictionary, config or CacheConfig())
    methods = [("full", "fp16", None)] + [("lexico", f"s={s}", s) for s in sparsities]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens)
    rows = []
    with attention_restored(loaded.model), tempfile.TemporaryDirectory(prefix="lexico-niah-") as folder:
        sessions = [(method, setting, make(method, s)) for method, setting, s in methods]
        path = Path(folder) / "document.txt"
        for trial, (length, depth) in enumerate((L, d) for L in lengths for d in depths):
            number = needle_number(seed, trial)
            path.write_text(plant_needle(loaded.tokenizer, haystack, length, depth, NEEDLE.format(number=number)))
            for method, setting, session in sessions:
                session.clear()
                reply = "".join(session.ask_document(str(path), QUESTION, sampling))
                found = needle_found(reply, number)
                logger.info("L=%d d=%.2f %s %s: %r (needle %d)", length, depth, method, setting, reply, number)
                row = {"length": length, "depth": depth, "method": method, "setting": setting, "found": found}
                rows.append({**row, "reply": reply})
                if progress is not None:
                    progress(1)
    return {"rows": rows}


def plot_niah(result: dict, path: str) -> None:
    """Heatmap of found (green) / missed (red): depth by length, one panel per method and setting."""
    from lexico_chat.evals.harness import new_figure, save_figure

    rows = result["rows"]
    panels = list(dict.fromkeys((r["method"], r["setting"]) for r in rows))
    lengths = sorted({r["length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    figure = new_figure(figsize=(3.2 * len(panels), 3.2))
    for i, (method, setting) in enumerate(panels):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for r in rows:
            if (r["method"], r["setting"]) == (method, setting):
                grid[depths.index(r["depth"])][lengths.index(r["length"])] = float(r["found"])
        axes = figure.add_subplot(1, len(panels), i + 1)
        axes.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        axes.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        axes.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        axes.set_xlabel("haystack tokens")
        axes.set_ylabel("needle depth" if i == 0 else "")
        found = sum(v == 1.0 for line in grid for v in line)
        axes.set_title(f"{method} {setting}: {found}/{len(lengths) * len(depths)}")
    save_figure(figure, path)


def register(subparsers) -> None:
    from lexico_chat.evals.harness import add_comparison_options
    from lexico_chat.options import positive_int

    p = subparsers.add_parser("niah", help="needle in a haystack via the chat template, full cache vs Lexico")
    p.add_argument("--haystack", required=True, help="UTF-8 filler text file")
    p.add_argument(
        "--lengths",
        type=positive_int,
        nargs="+",
        default=list(DEFAULT_LENGTHS),
        help="document tokens (1024 2048 4096)",
    )
    p.add_argument(
        "--depths", type=float, nargs="+", default=list(DEFAULT_DEPTHS), help="needle depths in [0, 1] (0 .25 .5 .75 1)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=16, help="reply tokens (default 16)")
    add_comparison_options(p, DEFAULT_SPARSITIES)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lexico_chat.evals.harness import check_sparsities, seed_everything
    from lexico_chat.lookup import find_dictionary
    from lexico_chat.models import load_model
    from lexico_chat.options import cache_config
    from lexico_chat.progress import ProgressBar
    from lexico_chat.textfile import read_text

    bad = [d for d in args.depths if not 0.0 <= d <= 1.0]
    if bad:
        raise LexicoError(f"--depths must be in [0, 1], got {bad}")
    config = cache_config(args)
    seed_everything(args.seed)
    haystack = read_text(args.haystack)
    loaded = load_model(args.model, device=args.device)
    too_long = [n for n in args.lengths if n + 64 + args.max_new_tokens > loaded.dims.max_positions]
    if too_long:
        raise LexicoError(
            f"--lengths must leave room for the prompt and reply within the model's "
            f"{loaded.dims.max_positions} positions, got {too_long}"
        )
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, args.dictionary)
    sparsities = check_sparsities(args.sparsity, dictionary)
    trials = len(args.lengths) * len(args.depths) * (1 + len(sparsities))
    with ProgressBar(trials, "niah", unit="trial") as bar:
        result = niah_eval(
            loaded,
            haystack,
            dictionary,
            args.lengths,
            args.depths,
            sparsities,
            config=config,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            progress=bar.stage("trials"),
        )
    if args.plot:
        plot_niah(result, args.plot)
    emit(result, args.json)
    return 0
