"""`eval speed` pieces: interleaved timing feeds every cache the same tokens as a plain run would."""

import torch
from transformers import DynamicCache

from lexico_chat.cache import LexicoCache
from lexico_chat.config import CacheConfig
from lexico_chat.engine.prefill import prefill
from lexico_chat.evals.speed import context_ids, interleaved_decode, interleaved_prefill, speed_eval
from tests.conftest import identity_dictionary


def test_interleaved_runs_equal_separate_runs(tiny_model):
    model = tiny_model("llama")
    ids = context_ids(128, 70, seed=3)
    dictionary = identity_dictionary(model)

    def lexico():
        return LexicoCache.from_model(
            model,
            dictionary,
            CacheConfig(sparsity=16, buffer=8, window=4, coef_dtype="float32", buffer_dtype="float32"),
        )

    caches = [DynamicCache(config=model.config), lexico()]
    seconds, logits = interleaved_prefill(model, ids, caches, chunk_size=32)
    alone = prefill(model, ids, lexico(), chunk_size=32)
    torch.testing.assert_close(logits[1], alone)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)
    ms = interleaved_decode(model, caches, logits, 5)
    assert all(s > 0 for s in seconds) and all(m > 0 for m in ms)
    assert [c.get_seq_length() for c in caches] == [75, 75]


def test_speed_eval_reports_both_caches(tiny_model):
    model = tiny_model("llama")
    result = speed_eval(
        model,
        identity_dictionary(model),
        96,
        config=CacheConfig(sparsity=4, buffer=16, window=8),
        decode_tokens=3,
        chunk_size=32,
    )
    timings = {"full_decode_ms", "lexico_decode_ms", "full_prefill_tps", "lexico_prefill_tps"}
    assert set(result) == {"context", "native", *timings}
    assert result["context"] == 96 and min(result[k] for k in timings) > 0
