"""Planning a first-run training from measured rates: the most thorough rung that fits the time budget, disk and
output sizes that match the files written, and overall progress that only moves forward and can be cancelled."""

from __future__ import annotations

import threading

import pytest

from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.engine.first_run import _Tracker
from lexico_chat.engine.startup import TrainingCancelled
from lexico_chat.lookup import search_folders
from lexico_chat.models import ModelDims
from lexico_chat.training.plan import LADDER, Rates, plan_training

SMOL = ModelDims(num_layers=30, num_kv_heads=3, head_dim=64, max_positions=8192)
CPU = Rates("cpu", "float32", omp_per_s=40_000, exact_omp_per_s=40_000, update_s=1.0, tokens_per_s=500)


def _plan(budget_s: float, rates: Rates = CPU, atoms: int = 4096):
    return plan_training(SMOL, rates, atoms=atoms, sparsity=8, corpus_tokens=150_000, budget_s=budget_s)


@pytest.mark.parametrize("budget_s", [60, 600, 1800, 7200, 10**6])
def test_the_most_thorough_rung_that_fits(budget_s):
    plan = _plan(budget_s)
    rung = (plan.config.max_vectors, plan.config.iters)
    more = [r for r in LADDER if r[0] > rung[0]]
    assert plan.seconds <= budget_s or rung == (12_000, 5)  # the lightest rung with >= 2N vectors for N=4096
    if more:
        thorough = plan_training(SMOL, CPU, atoms=4096, sparsity=8, corpus_tokens=150_000, budget_s=10**9)
        assert thorough.config.max_vectors == LADDER[0][0]
        assert _plan(plan.seconds - 1).config.max_vectors <= rung[0]


def test_a_faster_device_trains_more_and_small_dictionaries_allow_small_rungs():
    gpu = Rates("cuda:0", "bfloat16", 5_000_000, 2_000_000, 0.01, 50_000)
    assert (_plan(600, gpu).config.max_vectors, _plan(600, gpu).config.iters) == LADDER[0]
    assert _plan(600, gpu).config.select_dtype == "bfloat16" and _plan(600).config.select_dtype == "float32"
    assert _plan(1e-3, atoms=64).config.max_vectors == LADDER[-1][0]
    assert _plan(1e-3, atoms=8192).config.max_vectors == 25_000  # the lightest rung with >= 2N vectors


def test_tokens_cover_the_vectors_and_sizes_match_the_files():
    plan = _plan(600)
    c = plan.config
    assert c.max_tokens * SMOL.num_kv_heads >= 2 * c.max_vectors
    shipped = LexicoDictionary.load(search_folders()[0] / "SmolLM2-135M-Instruct-N4096.safetensors")
    assert plan.output_bytes == 2 * shipped.keys.numel() * 2  # keys and values in fp16
    samples = 2 * 30 * (c.max_vectors + c.max_heldout) * 64 * 2
    assert plan.disk_bytes == samples + 2 * plan.output_bytes


def test_progress_moves_forward_to_the_end_and_cancels():
    plan = _plan(600)
    seen = []
    tracker = _Tracker(plan, done_layers=0, collected=False, report=seen.append, cancel=None)
    tracker("collect", 500, 1000)
    tracker("collect", 1000, 1000)
    for layer in range(SMOL.num_layers):
        for kind in ("keys", "values"):
            for round_ in range(1, plan.config.iters + 1):
                tracker(f"layer {layer} {kind} rre 0.100", round_, plan.config.iters)
    fractions = [event.fraction for event in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert seen[0].stage == "reading the corpus: 500 of 1,000 tokens"
    iters = plan.config.iters
    assert seen[-1].stage == f"fitting layer 29 values, error 0.100 (round {iters} of {iters})"
    resumed = _Tracker(plan, done_layers=15, collected=True, report=seen.append, cancel=None)
    resumed("layer 15 keys rre 0.1", 1, iters)
    expected = (plan.collect_s + (15 * 2 * iters + 1) * plan.step_s) / plan.seconds
    assert seen[-1].fraction == pytest.approx(expected) and 0.5 < expected < 0.6
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrainingCancelled):
        _Tracker(plan, 0, False, seen.append, cancel)("collect", 1, 10)
