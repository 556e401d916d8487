"""Training settings for a model the project has never seen, sized by a short timed probe on this device.

``probe_rates`` times, on the device the model sits on, OMP at the dictionary's shape with the selection
dtype the cache's "auto" picks (``lexico_chat.omp.fastest_select_dtype``: bf16 only where it is at least twice
as fast as fp32) and with exact fp32, one closed-form dictionary update (an N×N solve) and a forward pass of
the model. ``plan_training``
then picks the largest number of vectors and rounds per layer whose estimated time fits ``budget_s``, and
says how long it should take and how much disk it needs.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

from lexico_chat.models import LoadedModel, ModelDims
from lexico_chat.omp import fastest_select_dtype, omp
from lexico_chat.timing import timed
from lexico_chat.training import DEFAULT_BUDGET_S
from lexico_chat.training.fit import mod_update
from lexico_chat.training.trainer import EVAL_SPARSITIES, TrainConfig, saved_config
from lexico_chat.units import duration

__all__ = ["LADDER", "Rates", "TrainingPlan", "auto_plan", "plan_for", "plan_training", "probe_rates"]

# (vectors per layer, rounds), most thorough first; the plan takes the first that fits the time budget
LADDER = ((200_000, 12), (100_000, 10), (50_000, 8), (25_000, 6), (12_000, 5), (6_000, 4))
_BYTES_FP16 = 2


@dataclass(frozen=True)
class Rates:
    """What the probe measured on ``device``.

    omp_per_s : vectors coded per second at the training sparsity with ``select_dtype`` (the faster one).
    exact_omp_per_s : the same with fp32 selection (the held-out evaluation's OMP).
    update_s : seconds of one dictionary update.
    tokens_per_s : forward-pass throughput of the model (collecting keys and values).
    """

    device: str
    select_dtype: str
    omp_per_s: float
    exact_omp_per_s: float
    update_s: float
    tokens_per_s: float


@dataclass(frozen=True)
class TrainingPlan:
    """Settings and what they cost: ``seconds`` estimated, ``disk_bytes`` at the peak (vectors, per-layer
    checkpoints and the output), ``output_bytes`` kept afterwards; ``step_s``/``collect_s`` per fitting round
    of one kind of one layer (its share of the held-out evaluation included) and for reading the corpus."""

    config: TrainConfig
    rates: Rates
    layers: int
    collect_s: float
    step_s: float
    disk_bytes: int
    output_bytes: int

    @property
    def seconds(self) -> float:
        return self.collect_s + self.layers * 2 * self.config.iters * self.step_s

    def summary(self) -> str:
        """``25,000 vectors × 6 rounds per layer, about 4 min on cpu (probe: OMP 4,200 vectors/s, ...)``."""
        c, r = self.config, self.rates
        return (
            f"{c.max_vectors:,} vectors × {c.iters} rounds per layer, about {duration(self.seconds)} on {r.device} "
            f"(probe: OMP {r.omp_per_s:,.0f} vectors/s, update {r.update_s:.2f} s, forward {r.tokens_per_s:,.0f} tok/s)"
        )


def probe_rates(loaded: LoadedModel, atoms: int, sparsity: int, vectors: int = 512) -> Rates:
    """Time OMP (the cache's "auto" selection dtype and exact fp32), one dictionary update and one forward pass
    on the model's device."""
    model = loaded.model
    device = next(model.parameters()).device
    m = loaded.dims.head_dim
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(m, atoms, generator=gen)
    d = (d / d.norm(dim=0)).to(device)
    x = torch.randn(vectors, m, generator=gen).to(device)
    best = str(fastest_select_dtype(device)).removeprefix("torch.")  # the cache's own "auto" choice
    rates, codes = {}, None
    for name in dict.fromkeys((best, "float32")):
        omp(x[:16], d, sparsity, select_dtype=getattr(torch, name))  # warm-up
        seconds, codes = timed(lambda name=name: omp(x, d, sparsity, select_dtype=getattr(torch, name)), device)
        rates[name] = vectors / max(seconds, 1e-9)
    update_s, _ = timed(lambda: mod_update(x, *codes, d), device)
    return Rates(str(device), best, rates[best], rates["float32"], update_s, _forward_rate(model, device))


@torch.inference_mode()
def _forward_rate(model, device, tokens: int = 128) -> float:
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0)).to(device)
    model(input_ids=ids)  # warm-up at the same shape
    seconds, _ = timed(lambda: model(input_ids=ids), device)
    return tokens / max(seconds, 1e-9)


def plan_training(
    dims: ModelDims,
    rates: Rates,
    *,
    atoms: int,
    sparsity: int,
    corpus_tokens: int,
    budget_s: float = DEFAULT_BUDGET_S,
    base: TrainConfig | None = None,
) -> TrainingPlan:
    """The most thorough rung of ``LADDER`` with at least 2·atoms vectors whose estimate fits ``budget_s`` (else
    the lightest such rung), for ``atoms`` atoms at ``sparsity``; other settings come from ``base``."""
    base = base or TrainConfig(atoms=atoms, sparsity=sparsity, max_vectors=max(atoms, 1))
    rungs = [(v, i) for v, i in LADDER if v >= 2 * atoms]  # never empty: atoms <= 32767
    plans = [_plan(dims, rates, base, atoms, sparsity, v, i, corpus_tokens) for v, i in rungs]
    return next((p for p in plans if p.seconds <= budget_s), plans[-1])


def plan_for(config: TrainConfig, dims: ModelDims, rates: Rates, corpus_tokens: int) -> TrainingPlan:
    """The estimate for given settings (a run resumed from its work folder keeps the settings it began with)."""
    return _build(dims, rates, config, corpus_tokens)


def _plan(dims, rates, base, atoms, sparsity, vectors, iters, corpus_tokens) -> TrainingPlan:
    heldout = min(8192, max(1024, vectors // 12))
    needed = max(2 * vectors, 12 * heldout * base.heldout_every // 10) / dims.num_kv_heads
    config = dataclasses.replace(
        base,
        atoms=atoms,
        sparsity=sparsity,
        iters=iters,
        max_vectors=vectors,
        max_heldout=heldout,
        max_tokens=math.ceil(max(needed, 4 * base.window)),
        select_dtype=rates.select_dtype,
    )
    return _build(dims, rates, config, corpus_tokens)


def _build(dims: ModelDims, rates: Rates, config: TrainConfig, corpus_tokens: int) -> TrainingPlan:
    tokens = min(config.max_tokens * (1 + 1 / config.heldout_every), corpus_tokens)
    vectors = min(config.max_vectors, tokens * dims.num_kv_heads)
    heldout = min(config.max_heldout, tokens / config.heldout_every * dims.num_kv_heads)
    fit = vectors / rates.omp_per_s + rates.update_s
    evaluated = [s for s in EVAL_SPARSITIES if s <= min(dims.head_dim, config.atoms)]
    evaluation = 2 * sum(heldout * s / config.sparsity for s in evaluated) / rates.exact_omp_per_s  # fit + sampled
    dictionary = 2 * dims.num_layers * dims.head_dim * config.atoms * _BYTES_FP16
    samples = 2 * dims.num_layers * (vectors + heldout) * dims.head_dim * _BYTES_FP16
    return TrainingPlan(
        config=config,
        rates=rates,
        layers=dims.num_layers,
        collect_s=tokens / rates.tokens_per_s,
        step_s=fit + evaluation / config.iters,
        disk_bytes=int(samples + 2 * dictionary),
        output_bytes=int(dictionary),
    )


def auto_plan(
    loaded: LoadedModel,
    texts: list[str],
    work: str | os.PathLike,
    base: TrainConfig,
    budget_s: float = DEFAULT_BUDGET_S,
) -> TrainingPlan:
    """The plan for training ``loaded`` on ``texts`` with ``base``'s atoms, sparsity and other settings, its
    vectors and rounds sized by a probe of this device to about ``budget_s``; where the work folder ``work``
    holds an earlier run of this model, that run's settings, so that it resumes instead of starting over."""
    tokens = sum(len(loaded.tokenizer(text)["input_ids"]) for text in texts)
    rates = probe_rates(loaded, base.atoms, base.sparsity)
    saved = saved_config(work)
    if saved is not None and saved["model_id"] == loaded.model_id:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        return plan_for(TrainConfig(**{k: v for k, v in saved.items() if k in fields}), loaded.dims, rates, tokens)
    return plan_training(
        loaded.dims, rates, atoms=base.atoms, sparsity=base.sparsity, corpus_tokens=tokens, budget_s=budget_s, base=base
    )
