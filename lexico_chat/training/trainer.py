"""Resumable dictionary training: collect once, then fit and checkpoint layer by layer.

Work folder layout (``<out>.work/`` unless given)::

    config.json              the settings; a resume with other settings is refused
    vectors.safetensors      sampled training and held-out K/V vectors of every layer
    layer_000.safetensors    fitted key/value dictionaries of layer 0 + held-out errors (JSON)
    ...

Interrupting at any point loses at most the layer being fitted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lexico_chat.atomic import write_atomic
from lexico_chat.config import DEFAULT_KEY_SPACE, KEY_SPACES, SELECT_DTYPES, CacheConfig
from lexico_chat.dictionary import DictionaryMeta, LexicoDictionary
from lexico_chat.errors import LexicoError
from lexico_chat.models import LoadedModel
from lexico_chat.omp import select_dtype_for
from lexico_chat.training.collect import KVSample, collect_kv, token_windows
from lexico_chat.training.fit import fit_dictionary, relative_error, sampled_dictionary

__all__ = ["TrainConfig", "train_dictionary", "EVAL_SPARSITIES", "saved_config", "layers_done"]

logger = logging.getLogger(__name__)
EVAL_SPARSITIES = (4, 8, 16, 32)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (all recorded in the work folder and the output metadata)."""

    atoms: int = CacheConfig.atoms
    sparsity: int = CacheConfig.sparsity
    iters: int = 10
    max_vectors: int = 100_000
    max_heldout: int = 8192
    max_tokens: int = 150_000
    window: int = 1024
    heldout_every: int = 10
    update: str = "mod"
    seed: int = 0
    key_space: str = DEFAULT_KEY_SPACE  # "pre_rope" codes keys before their rotation (lexico_chat.rope)
    values_from: str | None = None  # take value dictionaries from this file instead of fitting them
    select_dtype: str = "auto"  # OMP's atom selection while fitting ("auto": lexico_chat.omp.fastest_select_dtype)

    def __post_init__(self) -> None:
        if self.atoms < 2 or self.atoms > 32767:
            raise LexicoError(f"--atoms must be in [2, 32767], got {self.atoms}")
        if not 1 <= self.sparsity <= 64:
            raise LexicoError(f"--sparsity must be in [1, 64], got {self.sparsity}")
        if self.key_space not in KEY_SPACES:
            raise LexicoError(f"--key-space must be one of {list(KEY_SPACES)}, got {self.key_space!r}")
        if self.select_dtype not in SELECT_DTYPES:
            raise LexicoError(f"`select_dtype` must be one of {list(SELECT_DTYPES)}, got {self.select_dtype!r}")
        if self.max_vectors < self.atoms:
            raise LexicoError(f"--max-vectors ({self.max_vectors}) must be at least --atoms ({self.atoms})")


Progress = Callable[[str, int, int], None]  # (stage, done, total)


def train_dictionary(
    loaded: LoadedModel,
    texts: list[str],
    out: str | os.PathLike,
    config: TrainConfig,
    *,
    corpus_note: str = "",
    workdir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> LexicoDictionary:
    """Train key/value dictionaries for every layer of ``loaded.model`` on ``texts``; write ``out``."""
    dims = loaded.dims
    if config.sparsity > dims.head_dim:
        raise LexicoError(f"--sparsity must be at most head_dim={dims.head_dim}, got {config.sparsity}")
    donor = _values_donor(config, loaded.model_id, dims)
    work = Path(workdir) if workdir else Path(f"{out}.work")
    _check_workdir(work, config, loaded.model_id)
    sample = _load_or_collect(loaded, texts, config, work, progress)
    per_layer = []
    for layer in range(dims.num_layers):
        values = None if donor is None else donor.values[layer].float()
        per_layer.append(_fit_layer(sample, layer, config, work, progress, device=loaded.model.device, values=values))
    keys = torch.stack([p[0] for p in per_layer])
    values = torch.stack([p[1] for p in per_layer])
    heldout = _summarise([p[2] for p in per_layer])
    meta = DictionaryMeta(
        model_id=loaded.model_id,
        num_layers=dims.num_layers,
        num_kv_heads=dims.num_kv_heads,
        head_dim=dims.head_dim,
        atoms=config.atoms,
        train_sparsity=config.sparsity,
        corpus=f"{corpus_note} ({sample.tokens} tokens; {config.max_vectors} vectors/layer; config "
        f"{json.dumps(dataclasses.asdict(config))})".strip(),
        seed=config.seed,
        heldout=heldout,
        key_space=config.key_space,
    )
    dictionary = LexicoDictionary(keys, values, meta)
    dictionary.save(out)
    return dictionary


def saved_config(work: str | os.PathLike) -> dict | None:
    """The settings (``model_id`` and TrainConfig fields) a work folder was started with, or None; a field
    the folder predates reads as its default."""
    path = Path(work) / "config.json"
    if not path.is_file():
        return None
    return {**dataclasses.asdict(TrainConfig()), **json.loads(path.read_text())}


def layers_done(work: str | os.PathLike) -> int:
    """Layers a work folder already holds fitted (a rerun skips them)."""
    return len(list(Path(work).glob("layer_*.safetensors")))


def _check_workdir(work: Path, config: TrainConfig, model_id: str) -> None:
    wanted = {"model_id": model_id, **dataclasses.asdict(config)}
    have = saved_config(work)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.json"
    if have is not None:
        if have != wanted:
            diff = sorted(k for k in wanted if have.get(k) != wanted[k])
            raise LexicoError(
                f"work folder {work} belongs to a run with other settings ({', '.join(diff)}); "
                "remove it or pass another --workdir"
            )
        logger.info("resuming from %s", work)
        return
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(wanted, indent=1)))


def _load_or_collect(loaded: LoadedModel, texts, config: TrainConfig, work: Path, progress) -> KVSample:
    path = work / "vectors.safetensors"
    if path.is_file():
        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            tokens = int(fh.metadata()["tokens"])
        return KVSample(t["keys"], t["values"], t["heldout_keys"], t["heldout_values"], tokens)
    window = min(config.window, getattr(loaded.model.config.get_text_config(), "sliding_window", None) or config.window)
    windows = _pick_windows(token_windows(loaded.tokenizer, texts, window), config)
    total, done = sum(len(w) for w in windows), 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress("collect", done, total)

    sample = collect_kv(
        loaded.model,
        windows,
        max_vectors=config.max_vectors,
        heldout_every=config.heldout_every,
        max_heldout=config.max_heldout,
        seed=config.seed,
        key_space=config.key_space,
        progress=step,
    )
    if sample.keys.shape[1] < config.atoms:
        raise LexicoError(
            f"the corpus gave {sample.keys.shape[1]} vectors per layer, fewer than --atoms "
            f"{config.atoms}: give more text or fewer atoms"
        )
    tensors = {
        "keys": sample.keys,
        "values": sample.values,
        "heldout_keys": sample.heldout_keys,
        "heldout_values": sample.heldout_values,
    }
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"tokens": str(sample.tokens)}))
    return sample


def _pick_windows(windows: list[torch.Tensor], config: TrainConfig) -> list[torch.Tensor]:
    """A seeded random subset of about ``max_tokens`` tokens, keeping the held-out interleave."""
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(windows), generator=gen).tolist()
    picked, tokens = [], 0
    for i in order:
        if tokens >= config.max_tokens * (1 + 1 / config.heldout_every):
            break
        picked.append(windows[i])
        tokens += len(windows[i])
    return picked


def _values_donor(config: TrainConfig, model_id: str, dims) -> LexicoDictionary | None:
    """The dictionary whose value atoms ``--values-from`` reuses, checked against the model and N."""
    if config.values_from is None:
        return None
    donor = LexicoDictionary.load(config.values_from)
    donor.check_model(model_id, dims.num_layers, dims.num_kv_heads, dims.head_dim, source=config.values_from)
    if donor.meta.atoms != config.atoms:
        raise LexicoError(
            f"--values-from {config.values_from} has N={donor.meta.atoms} atoms, not --atoms {config.atoms}"
        )
    return donor


def _fit_layer(
    sample: KVSample, layer: int, config: TrainConfig, work: Path, progress, device=None, values=None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Fit (or resume) one layer's dictionaries; ``values`` (m, N), if given, is used instead of fitting."""
    path = work / f"layer_{layer:03d}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as fh:
            return fh.get_tensor("keys"), fh.get_tensor("values"), json.loads(fh.metadata()["heldout"])
    fitted, errors = {}, {}
    for kind, train, held in (
        ("keys", sample.keys, sample.heldout_keys),
        ("values", sample.values, sample.heldout_values),
    ):
        seed = config.seed * 1000 + layer * 2 + (kind == "values")

        def step(it: int, rre: float, kind=kind) -> None:
            if progress:
                progress(f"layer {layer} {kind} rre {rre:.3f}", it + 1, config.iters)

        x, x_held = train[layer].to(device), held[layer][: config.max_heldout].to(device)
        if kind == "values" and values is not None:
            d = values.to(device)
        else:
            d = fit_dictionary(
                x,
                config.atoms,
                config.sparsity,
                iters=config.iters,
                seed=seed,
                update=config.update,
                select_dtype=select_dtype_for(config.select_dtype, device),
                step=step,
            )
        baseline = sampled_dictionary(x, config.atoms, seed)
        fitted[kind] = d.contiguous().cpu()
        errors[kind] = _heldout_errors(x_held, d)
        errors[f"sampled_{kind}"] = _heldout_errors(x_held, baseline)
    meta = {"heldout": json.dumps(errors)}
    write_atomic(path, lambda tmp: save_file(fitted, tmp, metadata=meta))
    logger.info("layer %d: held-out rre keys %s values %s", layer, errors["keys"], errors["values"])
    return fitted["keys"], fitted["values"], errors


def _heldout_errors(held: torch.Tensor, d: torch.Tensor) -> dict[str, float]:
    m, n = d.shape
    return {str(s): float(relative_error(held, d, s).mean()) for s in EVAL_SPARSITIES if s <= min(m, n)}


def _summarise(per_layer: list[dict]) -> dict:
    """Mean held-out error over layers per kind and sparsity, plus the per-layer figures."""
    summary = {}
    for kind in per_layer[0]:
        summary[kind] = {s: sum(p[kind][s] for p in per_layer) / len(per_layer) for s in per_layer[0][kind]}
    summary["per_layer"] = per_layer
    return summary
