"""Default command: the terminal UI, or a headless answer with --prompt."""

from __future__ import annotations

import argparse
import json
import sys

from lexico_chat.errors import LexicoError, MissingDictionaryError
from lexico_chat.options import (
    add_cache_kind_option,
    add_cache_options,
    add_dictionary_options,
    add_model_options,
    add_train_budget_option,
    cache_config,
)

__all__ = ["add_arguments", "run", "session_options"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # cache flags default to None: unset ones come from the --resume file, else CacheConfig's defaults
    add_model_options(parser)
    add_dictionary_options(parser, defaults=False)
    add_cache_options(parser, defaults=False)
    add_cache_kind_option(parser, defaults=False)
    parser.add_argument("--prompt", default=None, help="answer one prompt on stdout and exit (headless)")
    parser.add_argument("--doc", default=None, help="UTF-8 document to ask about (with --prompt, or opened in the UI)")
    parser.add_argument("--resume", default=None, help="continue a saved session file")
    parser.add_argument("--save", default=None, help="save the session to this file after the reply")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object with the reply and stats")
    parser.add_argument(
        "--train-dictionary-if-missing",
        action="store_true",
        help="with no dictionary for the model, train one now (progress on stderr), then answer",
    )
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=None,
        metavar="FILE",
        help="text files or folders to train a missing dictionary on (default: the bundled essays)",
    )
    add_train_budget_option(parser)


def session_options(args: argparse.Namespace):
    """SessionOptions from flags; unset cache flags come from the --resume file, else the defaults."""
    from lexico_chat.engine.options import SessionOptions

    saved = {}
    if args.resume:
        from lexico_chat.engine.persist import saved_cache_settings

        saved = saved_cache_settings(args.resume)
    return SessionOptions(
        model=args.model,
        device=args.device,
        dictionary=args.dictionary,
        cache=cache_config(args, saved),
        system=args.system,
    )


def _sampling(args: argparse.Namespace):
    from lexico_chat.engine.types import SamplingConfig

    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1:
        raise LexicoError(
            f"need --temperature >= 0, 0 < --top-p <= 1, --max-new-tokens >= 1; got "
            f"{args.temperature}, {args.top_p}, {args.max_new_tokens}"
        )
    return SamplingConfig(args.temperature, args.top_p, args.seed, args.max_new_tokens)


def _open(args: argparse.Namespace, options, status=None):
    """The ChatSession the flags ask for (a MissingDictionaryError carries the first-run training offer)."""
    from lexico_chat.engine.first_run import open_session
    from lexico_chat.textfile import read_corpus

    corpus = (read_corpus(args.corpus), "; ".join(args.corpus)) if args.corpus else None
    budget = args.train_budget * 60
    return open_session(options, resume=args.resume, status=status, corpus=corpus, budget_s=budget)


def _open_headless(args: argparse.Namespace, options):
    try:
        return _open(args, options)
    except MissingDictionaryError as err:
        if not args.train_dictionary_if_missing or err.offer is None:
            raise
        return _train(err.offer)


def _train(offer):
    """Run the first-run training offer with a progress bar on stderr; the held-out errors before the chat."""
    from lexico_chat.progress import FractionBar

    print(f"lexico-chat: no dictionary for {offer.model_id} with N={offer.atoms}: training one now; {offer.summary}",
          file=sys.stderr)  # fmt: skip
    bar = FractionBar("training dictionary")
    try:
        session = offer.train(bar)
    finally:
        bar.close()
    print(f"lexico-chat: {offer.result}", file=sys.stderr)
    return session


def run(args: argparse.Namespace) -> int:
    if args.prompt is None:
        if args.save or args.json:
            raise LexicoError("--save and --json need --prompt (the UI saves with /save)")
        return _run_tui(args)
    from lexico_chat.atomic import check_writable

    if not args.prompt.strip():
        raise LexicoError("--prompt is empty: give the message to answer")
    if args.save:
        check_writable(args.save)  # a target that cannot be written fails before the model loads
    sampling = _sampling(args)
    options = session_options(args)
    if args.doc:
        from lexico_chat.textfile import read_text

        read_text(args.doc)  # a bad document fails before the model loads
    session = _open_headless(args, options)
    if args.doc:
        stream = session.ask_document(args.doc, args.prompt, sampling)
    else:
        stream = session.send(args.prompt, sampling)
    parts = []
    for delta in stream:
        parts.append(delta)
        if not args.json:
            sys.stdout.write(delta)
            sys.stdout.flush()
    if not args.json:
        sys.stdout.write("\n")
    if args.save:
        session.save(args.save)
    if args.json:
        print(json.dumps({"reply": "".join(parts), "stats": _json_stats(session.stats())}))
    return 0


def _json_stats(stats) -> dict:
    keys = (
        "model_id",
        "device",
        "kv_bytes",
        "fp16_bytes",
        "kv_fraction",
        "tokens_compressed",
        "tokens_buffer",
        "prefill_tps",
        "decode_tps",
        "rss_bytes",
        "gpu_used_bytes",
        "gpu_total_bytes",
    )
    return {k: getattr(stats, k) for k in keys}


def _run_tui(args: argparse.Namespace) -> int:
    try:
        from lexico_chat.tui.app import run_tui
    except ImportError as err:
        raise LexicoError(f"the terminal UI is unavailable ({err}); use --prompt") from None
    from lexico_chat.engine.startup import LoadingStatus

    options, loading = session_options(args), LoadingStatus()
    model = options.model or "SmolLM2-135M-Instruct"
    cache = options.cache
    detail = f"Lexico s={cache.sparsity_label()} N={cache.atoms}" if cache.lexico else "full cache"
    subtitle = f"{model} · {detail}"
    factory = lambda: _open(args, options, status=loading)  # noqa: E731 - runs in the app's loading worker
    return run_tui(factory, doc=args.doc, sampling=_sampling(args), subtitle=subtitle, loading=loading)
