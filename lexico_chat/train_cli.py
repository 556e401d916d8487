"""`lexico-chat train-dictionary`: fit per-layer key/value dictionaries for a model."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from lexico_chat.config import DEFAULT_KEY_SPACE, KEY_SPACES
from lexico_chat.options import DEFAULTS, add_model_options, add_train_budget_option, positive_int

__all__ = ["register", "run"]

_PLANNED = ("iters", "max_vectors", "max_tokens", "max_heldout")  # chosen by a probe unless one is given


def register(commands) -> None:
    p = commands.add_parser("train-dictionary", help="train Lexico dictionaries for a model (resumable)")
    add_model_options(p)
    p.add_argument(
        "--corpus",
        nargs="+",
        default=None,
        metavar="FILE",
        help="UTF-8 text files or folders of .txt (default: the bundled essays)",
    )
    p.add_argument(
        "--atoms", type=positive_int, default=DEFAULTS.atoms, help=f"atoms per dictionary N (default {DEFAULTS.atoms})"
    )
    p.add_argument(
        "--sparsity",
        type=positive_int,
        default=DEFAULTS.sparsity,
        help=f"training sparsity s (default {DEFAULTS.sparsity})",
    )
    p.add_argument("--out", required=True, help="output .safetensors file")
    planned = "; with none of --iters/--max-vectors/--max-tokens/--max-heldout, all four are sized to --train-budget"
    p.add_argument("--iters", type=positive_int, default=None, help=f"code/update alternations (default 10{planned})")
    p.add_argument("--max-vectors", type=positive_int, default=None, help="training vectors per layer (default 100k)")
    p.add_argument("--max-heldout", type=positive_int, default=None, help="held-out vectors per layer (default 8192)")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="corpus tokens read (default 150k)")
    add_train_budget_option(p)
    p.add_argument("--update", choices=("mod", "adam"), default="mod", help="dictionary update (default mod)")
    p.add_argument("--workdir", default=None, help="checkpoint folder (default OUT.work); rerun to resume")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--key-space",
        choices=[space.replace("_", "-") for space in KEY_SPACES],
        default=DEFAULT_KEY_SPACE.replace("_", "-"),
        help="code keys before RoPE (default: much lower error; attention rotates rebuilt keys) or after it",
    )
    p.add_argument("--values-from", default=None, metavar="DICT", help="reuse the value atoms of this dictionary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lexico_chat.models import load_model
    from lexico_chat.progress import StageBar
    from lexico_chat.textfile import read_corpus
    from lexico_chat.training.corpus import default_corpus
    from lexico_chat.training.plan import auto_plan
    from lexico_chat.training.trainer import TrainConfig, train_dictionary

    # an empty or missing corpus is named before any setting is judged
    texts, note = (read_corpus(args.corpus), "; ".join(args.corpus)) if args.corpus else default_corpus()
    given = {name: getattr(args, name) for name in _PLANNED if getattr(args, name) is not None}
    config = TrainConfig(  # checked before the slow model load
        atoms=args.atoms,
        sparsity=args.sparsity,
        update=args.update,
        seed=args.seed,
        key_space=args.key_space.replace("-", "_"),
        values_from=args.values_from,
        **given,
    )
    loaded = load_model(args.model, device=args.device)
    workdir = args.workdir or f"{args.out}.work"
    if not given:
        plan = auto_plan(
            loaded, texts, workdir, dataclasses.replace(config, max_vectors=args.atoms), args.train_budget * 60
        )
        config = plan.config
        print(f"training settings: {plan.summary()}", file=sys.stderr)
    bar = StageBar()
    start = time.perf_counter()
    dictionary = train_dictionary(loaded, texts, args.out, config, corpus_note=note, workdir=workdir, progress=bar)
    bar.close()
    held = dictionary.meta.heldout
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    for kind in ("keys", "values", "sampled_keys", "sampled_values"):
        print(f"held-out relative error, {kind}: " + ", ".join(f"s={s}: {e:.4f}" for s, e in held[kind].items()))
    return 0
