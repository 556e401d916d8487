"""`eval compare`: every row's perplexity and kv_fraction against independent computations."""

import json
import math

import pytest
import torch

from lexico_chat.config import CacheConfig
from lexico_chat.evals.compare import CompareSettings, compare_eval, eviction_window, plot_compare
from tests.conftest import identity_dictionary

T, M, HEADS, LAYERS = 200, 16, 2, 4
SETTINGS = CompareSettings(
    sparsities=(4, 16),
    cache=CacheConfig(buffer=16, window=8, coef_dtype="float32"),
    residual=16,
    group=8,
    sink=2,
    chunk_size=48,
    eviction_chunk=8,
)


def _ids(length=T, seed=5):
    return torch.randint(0, 128, (1, length), generator=torch.Generator().manual_seed(seed))


def _ppl(model, ids, mask=None):
    with torch.inference_mode():
        logits = model(ids, attention_mask=mask).logits[0].double()
    return math.exp(float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])))


def _lexico_tokens(total, chunk, buffer, window):
    """(compressed, buffer) tokens once ``total`` tokens are fed (LexicoLayer's documented rule: the whole
    windows more than ``buffer`` tokens behind the last token are compressed, whatever the chunking)."""
    compressed = max(0, total - 1 - buffer) // window * window
    return compressed, total - compressed


@pytest.fixture(scope="module")
def result(tiny_model):
    model = tiny_model("llama")
    model.set_attn_implementation("sdpa")  # whatever earlier tests left: compare_eval must restore this
    return compare_eval(model, _ids(), identity_dictionary(model), SETTINGS)


def test_rows_in_order(result):
    methods = [(r["method"], r["setting"]) for r in result["rows"]]
    windows = [eviction_window(result["rows"][k]["kv_fraction"], T, 2) for k in (1, 2)]
    assert result["tokens"] == T
    assert methods == [
        ("full", "fp16"),
        ("lexico", "s=4 N=16"),
        ("lexico", "s=16 N=16"),
        ("kivi", "2-bit"),
        ("kivi", "4-bit"),
        ("eviction", f"sink=2 window={windows[0]} (as lexico s=4)"),
        ("eviction", f"sink=2 window={windows[1]} (as lexico s=16)"),
    ]


def test_full_and_lossless_lexico_ppl_equal_one_forward(result, tiny_model):
    expected = _ppl(tiny_model("llama"), _ids())
    full, lexico = result["rows"][0], result["rows"][2]
    assert full["ppl"] == pytest.approx(expected, rel=1e-5) and full["kv_fraction"] == 1.0
    assert lexico["ppl"] == pytest.approx(expected, rel=1e-4)
    assert result["rows"][1]["ppl"] != pytest.approx(expected, rel=1e-3)  # s=4 of 16 dims is lossy


def test_kv_fractions_match_hand_counts(result):
    fp16 = 2 * T * M * 2  # per layer and head
    compressed, buffer = _lexico_tokens(T, 48, 16, 8)
    for row, s in zip(result["rows"][1:3], (4, 16)):
        # 12-bit index + fp32 coef; fp16 buffer. s=4 codes adapt (the default below 8 atoms): per window of 8 tokens,
        # 30 atoms (8 * 22 bytes of fixed codes, less 4 bytes of 4-bit counts, in whole pairs of 11 bytes) + counts
        per_token = (30 * (1.5 + 4) + 4) / 8 if s == 4 else s * (1.5 + 4)
        lexico = (2 * compressed * per_token + 2 * buffer * M * 2) / fp16
        assert row["kv_fraction"] == pytest.approx(lexico, rel=1e-12)
        eviction = result["rows"][5 if s == 4 else 6]
        window = eviction_window(lexico, T, 2)
        assert eviction["kv_fraction"] == pytest.approx(min(2 + window, T) / T, rel=1e-12)
    assert abs(result["rows"][5]["kv_fraction"] - result["rows"][1]["kv_fraction"]) <= 1 / T  # matched bytes
    assert result["rows"][6]["kv_fraction"] == 1.0 < result["rows"][2]["kv_fraction"]  # s=16 fp32 holds > fp16
    for row, bits in zip(result["rows"][3:5], (2, 4)):
        quantized = ((T - 16) // 8) * 8  # whole groups of 8 beyond the 16-token residual (48-token chunks)
        held = 2 * quantized * M * bits // 8 + 2 * 2 * (quantized // 8) * M + 2 * 2 * quantized * (M // 8)
        held += 2 * (T - quantized) * M * 2
        assert row["kv_fraction"] == pytest.approx(held / fp16, rel=1e-12)


def test_eviction_ppl_equals_masked_dense_reference(result, tiny_model):
    window = eviction_window(result["rows"][1]["kv_fraction"], T, 2)
    assert 2 + window < T - 40  # tokens are evicted
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & ((j < 2) | (j >= (i // 8) * 8 - window))
    expected = _ppl(tiny_model("llama"), _ids(), mask[None, None])
    assert result["rows"][5]["ppl"] == pytest.approx(expected, rel=1e-3)  # fp16 storage vs fp32 reference


def test_kivi_ppl_moves_toward_full_with_bits(result):
    full, two, four = (result["rows"][k]["ppl"] for k in (0, 3, 4))
    assert abs(four - full) < abs(two - full)


def test_attention_implementation_is_restored(tiny_model, result):
    assert tiny_model("llama").config._attn_implementation == "sdpa"


def test_plot_is_a_png(result, tmp_path):
    plot_compare(result, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_json_on_a_tiny_model(tiny_model, tmp_path, capsys, monkeypatch):
    from lexico_chat import cli
    from lexico_chat.models import LoadedModel
    from tests.test_eval_niah import char_tokenizer

    model = tiny_model("llama")
    path = tmp_path / "identity.safetensors"
    identity_dictionary(model).save(path)
    text = tmp_path / "text.txt"
    text.write_text("A small text, read twice. " * 12)
    monkeypatch.setattr("lexico_chat.models.load_model", lambda *a, **k: LoadedModel(model, char_tokenizer(), "tiny"))
    argv = ["eval", "compare", "--text", str(text), "--dictionary", str(path), "--atoms", "16", "--max-tokens", "150"]
    argv += ["--buffer", "16", "--window", "8", "--residual", "16", "--chunk", "32", "--json"]
    assert cli.main(argv + ["--plot", str(tmp_path / "out.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 150 and (tmp_path / "out.png").is_file()
    # the default sparsities above head_dim 16 (24, 32) are dropped, an explicit one is refused
    assert [r["setting"] for r in out["rows"] if r["method"] == "lexico"] == ["s=4 N=16", "s=8 N=16", "s=16 N=16"]
    assert cli.main(argv + ["--sparsity", "32"]) == 2
    assert "--sparsity values must be in [1, 16] for this dictionary, got [32]" in capsys.readouterr().err
