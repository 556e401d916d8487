"""`lexico-chat eval niah`: needle in a haystack through the chat template, Lexico against baselines at
matched bytes, with several needles per cell.

For each haystack length L (tokens), depth d in [0, 1], needle form (``lexico_chat.evals.needles``:
``number`` or ``paraphrase``) and each of the cell's K needles (``--needles``), the needle sentence is
planted at depth d of the haystack text truncated (or repeated) to L tokens in all. Every method answers
the same document: it goes to ``ChatSession.ask_document`` with the needle's question, exactly as a user's
document would (same chat template, same document prompt, same chunked prefill), and the reply is greedy.
The methods (``lexico_chat.evals.sessions``), with the caches' settings of ``eval compare``
(``CompareSettings``):

* ``full``: the chat's full cache (kv_fraction 1 by definition: an fp16 cache);
* ``lexico``: the chat's LexicoCache at each sparsity s;
* ``kivi``: ``KiviCache`` at each bit width, in a ChatSession whose ``new_state`` makes that cache;
* ``eviction``: ``EvictionCache`` (sink + recent window, fp16), one per Lexico sparsity, its window chosen
  per trial from the kv_fraction that Lexico row measured (``eviction_window``), so its bytes match.

Where the baselines' path differs from the user's: KIVI and eviction caches are no cache kind of the chat
(they enter through ``new_state``), and eviction reads the document ``eviction_chunk`` (32) tokens per
forward call (32 by default, against the chat's 512-token prefill chunk), so that each token sees at most
``eviction_chunk - 1`` tokens beyond its budget (with 512-token calls the matched budget would not hold
while the document is read).

``kv_fraction`` is measured when the document's prefill ends (before the reply): bytes held / fp16 bytes of
every token seen, the one count of ``lexico_chat.memory`` for every method. The JSON holds every trial's
row, a per-cell summary (hits out of K per method, setting, length, depth and form) and a totals table
per method with a 95% interval and the wall time (``lexico_chat.evals.niah_report``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lexico_chat.errors import LexicoError
from lexico_chat.evals.compare import CompareSettings, eviction_window
from lexico_chat.evals.needles import FORMS, Needle, cell_needles, plant_needle, questions
from lexico_chat.evals.niah_report import plot_niah, summarize, totals_table
from lexico_chat.output import emit

__all__ = [
    "MethodSpec",
    "NiahSettings",
    "Trial",
    "estimate_seconds",
    "fit_lengths",
    "niah_eval",
    "prompt_tokens",
    "register",
    "run",
]

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS = (1024, 2048, 4096, 8000)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_SPARSITIES = (8, 16)
DEFAULT_NEEDLES = 3
QUICK_GRID = {"lengths": (1024, 2048), "depths": (0.0, 0.5, 1.0), "needles": 2}
QUICK_CACHES = {"sparsities": (8,), "kivi_bits": (2,)}
"""``--quick``: 24 trials (2 lengths x 3 depths x 2 forms x 2 needles) of full, Lexico s=8, KIVI 2-bit and
matched eviction: 96 runs, about 21 min on 2 CPU cores with the default model (``estimate_seconds``: a
1024-token trial of the four takes ~35 s, Lexico 20 s of it; a 2048-token one ~68 s, Lexico 40 s).
Each further sparsity adds a Lexico and an eviction run per trial (+15 min)."""
CPU_COST = {  # (s per prefilled token, + s per token per 1,000 tokens of document, s per reply of ~16 tokens)
    "full": (2.5e-3, 0.31e-3, 2.0),
    "lexico": (12.4e-3, 2.4e-3, 3.0),
    "kivi": (2.0e-3, 0.25e-3, 2.0),
    "eviction": (4.0e-3, 0.49e-3, 1.0),
}
"""Cost of one run on 2 idle CPU cores with the default model, the basis of the estimate printed before a run:
fitted to one 1,024-token trial of this eval (prefill 353, 67, 431 and 220 tok/s for full, Lexico s=8, KIVI
2-bit, eviction) and to README's 4,096-token ``eval speed`` (full 267, Lexico 45 tok/s)."""
_TYPICAL_REPLY = 16  # tokens: greedy replies to these questions end after about 16
_SEAM_SLACK = 16  # re-tokenising the planted document may add a few tokens at the seams


@dataclass(frozen=True)
class MethodSpec:
    """One cache of a trial: ``method`` (one of ``sessions.METHODS``), its ``setting`` label and ``value``
    (lexico: the sparsity; kivi: the bits; eviction: the Lexico sparsity whose bytes it matches)."""

    method: str
    setting: str
    value: int | None = None


@dataclass(frozen=True)
class Trial:
    """One document: haystack ``length`` (tokens), needle ``depth``, ``index`` of the needle in its cell."""

    length: int
    depth: float
    index: int
    needle: Needle

    @property
    def label(self) -> str:
        return f"L={self.length} d={self.depth:g} {self.needle.form} #{self.index}"

    def fields(self) -> dict:
        """The trial's part of a result row."""
        where = {"length": self.length, "depth": self.depth, "form": self.needle.form, "trial": self.index}
        return {**where, "needle": self.needle.sentence, "answer": self.needle.answer}


@dataclass(frozen=True)
class NiahSettings:
    """What ``niah_eval`` runs: the grid (lengths x depths x forms, ``needles`` trials per cell), the reply
    length, the seed of the needles, and the caches (``caches.sparsities``, ``caches.kivi_bits``, ...)."""

    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    needles: int = DEFAULT_NEEDLES
    forms: tuple[str, ...] = FORMS
    max_new_tokens: int = 32
    seed: int = 0
    caches: CompareSettings = field(default_factory=lambda: CompareSettings(sparsities=DEFAULT_SPARSITIES))

    def __post_init__(self) -> None:
        bad = [d for d in self.depths if not 0.0 <= d <= 1.0]
        if bad:
            raise LexicoError(f"--depths must be in [0, 1], got {bad}")
        if not self.lengths or not self.depths:
            raise LexicoError(f"--lengths and --depths need one value each at least, got {self.lengths}, {self.depths}")
        for form in self.forms:
            cell_needles(form, self.seed, self.lengths[0], self.depths[0], self.needles)  # checks form and count

    @classmethod
    def quick(cls, **changes) -> NiahSettings:
        """The ``--quick`` grid and caches (``QUICK_GRID``, ``QUICK_CACHES``), with ``changes`` applied."""
        quick = cls(**QUICK_GRID, caches=CompareSettings(**QUICK_CACHES))
        return dataclasses.replace(quick, **changes)

    def methods(self) -> list[MethodSpec]:
        """full, lexico per sparsity, kivi per bit width, eviction per sparsity (matched bytes), in run order."""
        sparsities, bits = self.caches.sparsities, self.caches.kivi_bits
        labels = {s: f"s={self.caches.cache.replace(sparsity=s).sparsity_label()}" for s in sparsities}
        return (
            [MethodSpec("full", "fp16")]
            + [MethodSpec("lexico", labels[s], s) for s in sparsities]
            + [MethodSpec("kivi", f"{b}-bit", b) for b in bits]
            + [MethodSpec("eviction", f"as lexico {labels[s]}", s) for s in sparsities]
        )

    def trials(self) -> list[Trial]:
        """Every trial, by length, depth, form and needle."""
        return [
            Trial(length, depth, k, needle)
            for length in self.lengths
            for depth in self.depths
            for form in self.forms
            for k, needle in enumerate(cell_needles(form, self.seed, length, depth, self.needles))
        ]


def estimate_seconds(settings: NiahSettings, prompt: int) -> float:
    """Seconds the run should take on 2 CPU cores with the default model (``CPU_COST``): per trial and method,
    the prefill of T = length + ``prompt`` tokens, T x (a + b x T / 1000) s, and one reply."""
    reply = min(settings.max_new_tokens, _TYPICAL_REPLY) / _TYPICAL_REPLY
    methods = [spec.method for spec in settings.methods()]
    total = 0.0
    for trial in settings.trials():
        tokens = trial.length + prompt
        for a, b, answer in (CPU_COST[m] for m in methods):
            total += tokens * (a + b * tokens / 1000) + answer * reply
    return total


def prompt_tokens(tokenizer, questions) -> int:
    """Tokens the chat adds around a document (template, document prompt) for the longest of ``questions``."""
    from lexico_chat.engine.session import document_prompt
    from lexico_chat.engine.template import render
    from lexico_chat.engine.types import Message

    texts = [render(tokenizer, [Message("user", document_prompt("", q))]) for q in questions]
    return max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)


def fit_lengths(lengths, room: int, explicit: bool) -> tuple[list[int], list[int]]:
    """(lengths that fit, lengths left out) for at most ``room`` document tokens; a requested (``explicit``)
    length that does not fit raises LexicoError, as does a grid where none fits."""
    kept, left = [n for n in lengths if n <= room], [n for n in lengths if n > room]
    if left and explicit or not kept:
        raise LexicoError(
            f"--lengths must be at most {room} tokens to leave room for the prompt and the reply within the "
            f"model's context, got {left}"
        )
    return kept, left


def niah_eval(
    loaded,
    haystack: str,
    dictionary,
    settings: NiahSettings | None = None,
    *,
    progress: Callable[[int], object] | None = None,
    make_session: Callable | None = None,
) -> dict:
    """Run every trial of ``settings`` with every method.

    Parameters
    ----------
    loaded : the model (``LoadedModel``); its attention implementation is restored afterwards.
    haystack : filler text; dictionary : the LexicoDictionary of the model.
    make_session : ``make_session(method, value)`` → a session with ``clear()``, ``ask_document(path,
        question, sampling, progress)`` and ``cache.memory()`` (default: ``sessions.method_session``; value as
        there: sparsity, bits or window). progress : gets 1 per method run.

    Returns
    -------
    ``{"settings", "rows", "cells", "totals", "wall_s"}``: rows in trial order, each ``{"length", "depth",
    "form", "trial", "needle", "answer", "method", "setting", "tokens", "kv_fraction", "prefill_tps", "found",
    "reply", "seconds"}`` (+ ``"window"`` for eviction); cells and totals as ``niah_report.summarize``.
    """
    from lexico_chat.engine.types import SamplingConfig
    from lexico_chat.evals.harness import attention_restored
    from lexico_chat.evals.sessions import method_session

    settings = settings or NiahSettings()
    make = make_session or (lambda method, value: method_session(loaded, dictionary, settings.caches, method, value))
    session = functools.cache(make)  # one session per (method, value), cleared for every document
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=settings.max_new_tokens)
    rows, start = [], time.perf_counter()
    with attention_restored(loaded.model), tempfile.TemporaryDirectory(prefix="lexico-niah-") as folder:
        path = Path(folder) / "document.txt"
        for trial in settings.trials():
            needle = trial.needle
            path.write_text(plant_needle(loaded.tokenizer, haystack, trial.length, trial.depth, needle.sentence))
            rows += _trial_rows(trial, settings, session, str(path), sampling, progress)
    return {
        "settings": dataclasses.asdict(settings),
        "rows": rows,
        **summarize(rows),
        "wall_s": time.perf_counter() - start,
    }


def _trial_rows(trial: Trial, settings: NiahSettings, session: Callable, path: str, sampling, progress) -> list[dict]:
    """One row per method for the document at ``path``; eviction windows from this trial's Lexico rows."""
    needle, lexico, rows = trial.needle, {}, []
    for spec in settings.methods():
        value, extra = spec.value, {}
        if spec.method == "eviction":
            value = eviction_window(
                lexico[spec.value]["kv_fraction"], lexico[spec.value]["tokens"], settings.caches.sink
            )
            extra = {"window": value}
        begin = time.perf_counter()
        reply, measured = _ask(session(spec.method, value), spec.method, path, needle.question, sampling)
        found, seconds = needle.found(reply), time.perf_counter() - begin
        logger.info("%s %s %s: %r found=%s", trial.label, spec.method, spec.setting, reply, found)
        row = {**trial.fields(), "method": spec.method, "setting": spec.setting, **measured}
        rows.append(row | {"found": found, "reply": reply, "seconds": seconds, **extra})
        if spec.method == "lexico":
            lexico[spec.value] = rows[-1]
        if progress is not None:
            progress(1)
    return rows


def _ask(session, method: str, path: str, question: str, sampling) -> tuple[str, dict]:
    """(reply, {"tokens", "kv_fraction", "prefill_tps"}) of a fresh conversation about the document, cleared
    afterwards (an idle session holds no cache); kv_fraction is measured when the prefill ends (1 for the full
    cache: fp16 by definition)."""
    from lexico_chat.evals.harness import kv_fraction

    measured = {}

    def ingest(p) -> None:
        if p.done == p.total:
            fraction = 1.0 if method == "full" else kv_fraction(session.cache)
            measured.update(tokens=p.total, kv_fraction=fraction, prefill_tps=p.tokens_per_s)

    session.clear()
    reply = "".join(session.ask_document(path, question, sampling, ingest))
    session.clear()
    return reply, measured


def register(subparsers) -> None:
    from lexico_chat.baselines.quantize import BITS
    from lexico_chat.evals.harness import add_comparison_options
    from lexico_chat.options import positive_int

    p = subparsers.add_parser("niah", help="needle in a haystack via the chat template: Lexico vs KIVI and eviction")
    p.add_argument("--haystack", required=True, help="UTF-8 filler text file")
    lengths, bits = " ".join(map(str, DEFAULT_LENGTHS)), " ".join(map(str, CompareSettings().kivi_bits))
    p.add_argument("--lengths", type=positive_int, nargs="+", help=f"document tokens ({lengths}; fitted to the model)")
    p.add_argument("--depths", type=float, nargs="+", help="needle depths in [0, 1] (0 .25 .5 .75 1)")
    p.add_argument("--needles", type=positive_int, help=f"needles per cell and form (default {DEFAULT_NEEDLES})")
    p.add_argument("--form", choices=[*FORMS, "both"], default="both", help="needle form (default both)")
    p.add_argument("--kivi-bits", type=int, nargs="+", choices=BITS, help=f"KIVI code widths (default {bits})")
    p.add_argument(
        "--quick",
        action="store_true",
        help="small grid: lengths 1024 2048, depths 0 .5 1, 2 needles, s=8, KIVI 2-bit (~21 min on 2 CPU cores)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="reply tokens at most (default 32)")
    add_comparison_options(p, DEFAULT_SPARSITIES)
    p.set_defaults(func=run, sparsity=None)  # None: the grid's own (8 16, or 8 with --quick)


def run(args: argparse.Namespace) -> int:
    from lexico_chat.evals.harness import check_sparsities, seed_everything
    from lexico_chat.lookup import find_dictionary
    from lexico_chat.models import load_model
    from lexico_chat.progress import ProgressBar
    from lexico_chat.textfile import read_text
    from lexico_chat.units import duration

    settings = _settings(args)
    seed_everything(args.seed)
    haystack = read_text(args.haystack)
    loaded = load_model(args.model, device=args.device)
    settings, prompt = _fit_to_model(settings, loaded, explicit=args.lengths is not None)
    dictionary = find_dictionary(loaded.model_id, loaded.dims, args.atoms, args.dictionary)
    sparsities = check_sparsities(settings.caches.sparsities, dictionary, drop_invalid=args.sparsity is None)
    cache = settings.caches.cache.resolved(dictionary.meta)  # "auto" made concrete: the rows say which budget ran
    caches = dataclasses.replace(settings.caches, sparsities=tuple(sparsities), cache=cache)
    settings = dataclasses.replace(settings, caches=caches)
    trials, methods = len(settings.trials()), len(settings.methods())
    estimate = duration(estimate_seconds(settings, prompt))
    print(f"niah: {trials} trials x {methods} caches, ~{estimate} on 2 CPU cores", file=sys.stderr)
    with ProgressBar(trials * methods, "niah", unit="run") as bar:
        result = niah_eval(loaded, haystack, dictionary, settings, progress=bar.stage("trials"))
    if args.plot:
        plot_niah(result, args.plot)
    if args.json:
        emit(result, True)
    else:
        print(totals_table(result))
    return 0


def _settings(args: argparse.Namespace) -> NiahSettings:
    """The run the flags ask for: ``--quick`` or the default grid and caches, then every flag given."""
    from lexico_chat.options import cache_config

    base = NiahSettings.quick() if args.quick else NiahSettings()
    grid = _given(lengths=args.lengths, depths=args.depths, needles=args.needles)
    caches = _given(sparsities=args.sparsity, kivi_bits=args.kivi_bits)
    caches = dataclasses.replace(base.caches, **caches, cache=cache_config(args))
    forms = FORMS if args.form == "both" else (args.form,)
    return dataclasses.replace(
        base, **grid, forms=forms, max_new_tokens=args.max_new_tokens, seed=args.seed, caches=caches
    )


def _given(**flags) -> dict:
    """The flags given (not None), lists as tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in flags.items() if v is not None}


def _fit_to_model(settings: NiahSettings, loaded, explicit: bool) -> tuple[NiahSettings, int]:
    """(settings with the lengths that fit the model's context, prompt tokens around a document); says on
    stderr which default lengths were left out."""
    prompt = prompt_tokens(loaded.tokenizer, questions(settings.forms))
    room = loaded.dims.max_positions - prompt - settings.max_new_tokens - _SEAM_SLACK
    lengths, left = fit_lengths(settings.lengths, room, explicit)
    if left:
        print(f"niah: lengths {left} left out: this model's context holds documents of {room} tokens", file=sys.stderr)
    return dataclasses.replace(settings, lengths=tuple(lengths)), prompt
