"""`eval perplexity`: full-cache perplexity against an independent single forward; lossless Lexico equals full."""

import json
import math

import pytest
import torch

from lexico_chat.config import CacheConfig
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.evals.perplexity import chunked_nll, perplexity, perplexity_eval
from tests.conftest import identity_dictionary, random_dictionary


def _independent_ppl(model, ids):
    with torch.inference_mode():
        logits = model(ids).logits[0].double()
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none")
    return math.exp(float(nll.mean())), nll


def _ids(length, seed=4):
    return torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(seed))


def test_chunked_nll_matches_one_forward(tiny_model):
    from transformers import DynamicCache

    model = tiny_model("qwen2")
    ids = _ids(150)
    expected_ppl, expected_nll = _independent_ppl(model, ids)
    nll = chunked_nll(model, ids, DynamicCache(config=model.config), chunk_size=32)
    assert nll.shape == (149,)
    torch.testing.assert_close(nll.double(), expected_nll, rtol=1e-4, atol=1e-4)
    assert perplexity(nll) == pytest.approx(expected_ppl, rel=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lossless_lexico_ppl_equals_full(tiny_model, arch):
    model = tiny_model(arch)
    ids = _ids(200)
    result = perplexity_eval(
        model,
        ids,
        identity_dictionary(model),
        config=CacheConfig(sparsity=16, buffer=16, window=8, coef_dtype="float32", buffer_dtype="float32"),
        chunk_size=48,
    )
    expected, _ = _independent_ppl(model, ids)
    assert set(result) == {"tokens", "full_ppl", "lexico_ppl", "kv_fraction"} and result["tokens"] == 200
    assert result["full_ppl"] == pytest.approx(expected, rel=1e-5)
    assert result["lexico_ppl"] == pytest.approx(result["full_ppl"], abs=1e-4)


def test_lossy_dictionary_reports_its_cost(tiny_model):
    model = tiny_model("llama")
    result = perplexity_eval(
        model,
        _ids(200),
        random_dictionary(model),
        config=CacheConfig(sparsity=4, buffer=16, window=8, code_length="fixed"),
        chunk_size=64,
    )
    assert result["lexico_ppl"] != pytest.approx(result["full_ppl"], abs=1e-3)
    # 4 layers x 2 (K, V) x 2 KV heads: 176 compressed tokens (whole windows of 8 more than 16 behind the last
    # token) at 2.5 bytes (12-bit index, fp8 coefficient) x s=4, 24 buffer tokens of 16 dims held in fp16 under the
    # fp32 model
    compressed, buffer, fp16 = 176 * 10, 24 * 16 * 2, 200 * 16 * 2
    assert result["kv_fraction"] == pytest.approx((compressed + buffer) / fp16)


@pytest.mark.slow
def test_cli_on_default_model_lossless(default_model, tmp_path, capsys, monkeypatch):
    from lexico_chat import cli
    from lexico_chat.models import DEFAULT_MODEL_ID

    dims = default_model.dims
    path = tmp_path / "identity.safetensors"
    LexicoDictionary.identity(DEFAULT_MODEL_ID, dims.num_layers, dims.num_kv_heads, dims.head_dim).save(path)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    monkeypatch.setattr("lexico_chat.models.load_model", lambda *a, **k: default_model)
    code = cli.main(
        [
            "eval",
            "perplexity",
            "--text",
            str(text),
            "--dictionary",
            str(path),
            "--sparsity",
            "64",
            "--max-tokens",
            "300",
            "--buffer",
            "32",
            "--window",
            "16",
            "--chunk",
            "128",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 300
    # fp8 coefficients (the CLI default) on the identity basis: close, not equal
    assert result["lexico_ppl"] == pytest.approx(result["full_ppl"], rel=0.05)


def test_cli_skip_reads_a_later_span(default_model, tmp_path, capsys, monkeypatch):
    from lexico_chat import cli

    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"Line {i} says the river is {i % 7} miles wide." for i in range(60)))
    monkeypatch.setattr("lexico_chat.models.load_model", lambda *a, **k: default_model)
    argv = ["eval", "perplexity", "--text", str(text), "--max-tokens", "64", "--sparsity", "4", "--json"]
    assert cli.main([*argv, "--skip", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    ids = default_model.tokenizer(text.read_text(), return_tensors="pt")["input_ids"][:, 100:164]
    assert result["tokens"] == 64
    assert result["full_ppl"] == pytest.approx(_independent_ppl(default_model.model, ids)[0], rel=1e-4)
    assert cli.main([*argv, "--skip", "100000"]) == 2
    assert "--skip" in capsys.readouterr().err
