"""`eval agreement`: greedy agreement and KL(full || lexico) against hand and independent computations."""

import json
import math

import pytest
import torch

from lexico_chat.config import CacheConfig
from lexico_chat.evals.agreement import agreement_eval, chunk_statistics
from tests.conftest import identity_dictionary, random_dictionary


def _ids(length=160, seed=6):
    return torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(seed))


def test_chunk_statistics_by_hand():
    p = torch.tensor([[0.5, 0.25, 0.25], [0.7, 0.2, 0.1]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.5, 0.25], [0.7, 0.2, 0.1]], dtype=torch.float64)
    agree, kl = chunk_statistics(p.log() + 3.0, q.log() - 1.0)  # logits: any shift per row
    # row 1: 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0 = 0.25 ln 2; row 2: identical distributions
    assert agree == 1 and kl == pytest.approx(0.25 * math.log(2), rel=1e-12)


LOSSLESS = CacheConfig(buffer=16, window=8, coef_dtype="float32", buffer_dtype="float32")


def test_lossless_dictionary_agrees_everywhere(tiny_model):
    model = tiny_model("llama")
    ids = _ids()
    result = agreement_eval(model, ids, identity_dictionary(model), (16,), config=LOSSLESS, chunk_size=40)
    (row,) = result["rows"]
    assert result["tokens"] == 160 and row["sparsity"] == 16
    assert row["agreement"] == 1.0 and row["kl"] == pytest.approx(0.0, abs=1e-9)


def _lexico_logits(model, ids, dictionary, sparsity, chunk):
    from lexico_chat.cache import LexicoCache

    cache = LexicoCache.from_model(model, dictionary, CacheConfig(sparsity=sparsity, buffer=16, window=8))
    with torch.inference_mode():
        parts = [model(ids[:, s : s + chunk], past_key_values=cache).logits[0] for s in range(0, ids.shape[1], chunk)]
    model.set_attn_implementation("sdpa")
    return torch.cat(parts).double()


def test_lossy_dictionary_matches_independent_kl(tiny_model):
    model = tiny_model("llama")
    ids, dictionary = _ids(), random_dictionary(model)
    result = agreement_eval(model, ids, dictionary, (4, 8), config=CacheConfig(buffer=16, window=8), chunk_size=40)
    with torch.inference_mode():
        full = model(ids).logits[0].double()  # one forward, no cache
    for row in result["rows"]:
        lexico = _lexico_logits(model, ids, dictionary, row["sparsity"], 40)
        kl = torch.nn.functional.kl_div(
            lexico.log_softmax(-1), full.log_softmax(-1), log_target=True, reduction="none"
        ).sum(-1)
        assert row["kl"] == pytest.approx(float(kl.mean()), rel=1e-4) and row["kl"] > 1e-4
        assert row["agreement"] == pytest.approx(float((lexico.argmax(-1) == full.argmax(-1)).double().mean()))
        assert row["agreement"] < 1.0
    assert result["rows"][0]["kv_fraction"] < result["rows"][1]["kv_fraction"]


def test_cli_json_on_a_tiny_model(tiny_model, tmp_path, capsys, monkeypatch):
    from lexico_chat import cli
    from lexico_chat.models import LoadedModel
    from tests.test_eval_niah import char_tokenizer

    model = tiny_model("llama")
    path = tmp_path / "identity.safetensors"
    identity_dictionary(model).save(path)
    text = tmp_path / "text.txt"
    text.write_text("Agreement is measured on this text. " * 8)
    monkeypatch.setattr("lexico_chat.models.load_model", lambda *a, **k: LoadedModel(model, char_tokenizer(), "tiny"))
    argv = ["eval", "agreement", "--text", str(text), "--dictionary", str(path), "--atoms", "16", "--sparsity", "4"]
    argv += ["16", "--max-tokens", "120", "--buffer", "16", "--window", "8", "--chunk", "40", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 120 and [r["sparsity"] for r in out["rows"]] == [4, 16]
    assert 0.0 <= out["rows"][0]["agreement"] <= 1.0
