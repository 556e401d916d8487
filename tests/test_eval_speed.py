"""`eval speed` and its timing helper: interleaved prefill gives the logits of one plain forward, the
Lexico run is timed like the full one, and ``lexico_chat.timing`` measures what it is given."""

import types

import pytest
import torch

from lexico_chat import native, timing
from lexico_chat.evals.harness import attention_restored
from lexico_chat.evals.speed import context_ids, interleaved_decode, interleaved_prefill, speed_eval
from tests.conftest import identity_dictionary


class _Clock:
    """A fake ``time`` module whose clock only moves when ``spend(ms)`` is called."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def spend(self, ms: float) -> None:
        self.now += ms / 1e3


def test_time_ms_is_the_median_after_warmup(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    durations = iter([100.0, 100.0, 5.0, 1.0, 3.0])  # two warm-up calls, then three timed ones
    calls = []

    def fn():
        calls.append(1)
        clock.spend(next(durations))

    assert timing.time_ms(fn, torch.device("cpu"), reps=3, warmup=2) == pytest.approx(3.0)
    assert len(calls) == 5


def test_timed_returns_the_seconds_and_the_result(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    seconds, result = timing.timed(lambda: clock.spend(250.0) or "done", "cpu")
    assert result == "done"
    assert seconds == pytest.approx(0.25)


def _lossless_caches(model):
    from transformers import DynamicCache

    from lexico_chat.cache import LexicoCache
    from lexico_chat.config import CacheConfig

    config = CacheConfig(sparsity=16, atoms=16, buffer=8, window=8, coef_dtype="float32", buffer_dtype="float32")
    lossless = LexicoCache.from_model(model, identity_dictionary(model), config)
    return [DynamicCache(config=model.config), lossless]


def test_interleaved_prefill_and_decode_match_a_plain_forward(tiny_model):
    model = tiny_model("llama")
    ids = context_ids(128, 50, seed=3)
    with torch.inference_mode():
        expected = model(ids).logits[:, -1]  # (1, vocab)
    with attention_restored(model):
        caches = _lossless_caches(model)
        seconds, logits = interleaved_prefill(model, ids, caches, chunk_size=16)
        ms = interleaved_decode(model, caches, logits, steps=3)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    for last in logits:
        torch.testing.assert_close(last, expected, rtol=1e-4, atol=1e-4)
    assert len(ms) == 2 and all(m > 0 for m in ms)
    assert [cache.get_seq_length() for cache in caches] == [53, 53]


def test_speed_eval_reports_both_caches(tiny_model):
    model = tiny_model("llama")
    with attention_restored(model):  # 200 tokens > buffer + window: Lexico compresses
        result = speed_eval(model, identity_dictionary(model), 200, decode_tokens=2)
    timings = {"full_decode_ms", "lexico_decode_ms", "full_prefill_tps", "lexico_prefill_tps"}
    assert set(result) == {"context", "native", *timings}
    assert result["context"] == 200 and result["native"] == native.available()
    assert all(result[key] > 0 for key in timings)
