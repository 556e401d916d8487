"""Dictionary fitting and the resumable trainer."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.errors import LexicoError
from lexico_chat.models import LoadedModel
from lexico_chat.training import fit as trainer_fit
from lexico_chat.training import trainer
from lexico_chat.training.fit import fit_dictionary, relative_error, sampled_dictionary
from lexico_chat.training.trainer import TrainConfig, train_dictionary


class ByteTokenizer:
    """Stands in for a real tokenizer: one token per byte."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1] + [b % 250 + 2 for b in text.encode()]}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LoadedModel(LlamaForCausalLM(config).eval(), ByteTokenizer(), "test/TinyLlama")


TEXTS = [f"document {i}: " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(400)) for i in range(12)]


def test_mod_update_keeps_atoms_it_cannot_normalise():
    """An atom used only with ~0 coefficients solves to a ~0 column: the update keeps the old unit atom
    (the first pre-RoPE N=4096 training run shipped 5 such non-unit atoms in layer 0 before this guard)."""
    gen = torch.Generator().manual_seed(5)
    d = torch.randn(8, 6, generator=gen)
    d = d / d.norm(dim=0)
    x = torch.randn(50, 8, generator=gen)
    idx = torch.stack([torch.arange(50) % 5, torch.full((50,), 5)], dim=1)  # atom 5: a filler pick ...
    coef = torch.stack([torch.randn(50, generator=gen), torch.full((50,), 1e-20)], dim=1)  # ... with ~0 weight
    new = trainer_fit.mod_update(x, idx, coef, d)
    torch.testing.assert_close(new.norm(dim=0), torch.ones(6))
    assert torch.equal(new[:, 5], d[:, 5])


def test_fit_recovers_planted_dictionary_better_than_samples():
    gen = torch.Generator().manual_seed(0)
    true = torch.randn(16, 48, generator=gen)
    true /= true.norm(dim=0)
    support = torch.stack([torch.randperm(48, generator=gen)[:3] for _ in range(6000)])
    x = (true.t()[support] * torch.randn(6000, 3, 1, generator=gen)).sum(1)
    train, held = x[:5000], x[5000:]
    errors = []
    fitted = fit_dictionary(train, 48, 3, iters=15, seed=1, step=lambda it, err: errors.append(err))
    fit_err = relative_error(held, fitted, 3).mean()
    sampled_err = relative_error(held, sampled_dictionary(train, 48, 1), 3).mean()
    assert fit_err < 0.5 * sampled_err
    assert errors[-1] < 0.6 * errors[0], "training error must fall over the iterations"
    assert abs(errors[-1] - fit_err) < 0.05, "held-out error must track training error (no overfitting here)"
    assert torch.allclose(fitted.norm(dim=0), torch.ones(48), atol=1e-5)


def test_adam_update_also_improves():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3000, 16, generator=gen) * torch.linspace(3, 0.1, 16)
    base = relative_error(x, sampled_dictionary(x, 32, 0), 4).mean()
    adam = relative_error(x, fit_dictionary(x, 32, 4, iters=5, update="adam"), 4).mean()
    assert adam < base


def test_trainer_resumes_to_identical_result(tiny, tmp_path, monkeypatch):
    config = TrainConfig(
        atoms=32, sparsity=4, iters=2, max_vectors=600, max_heldout=200, window=128, heldout_every=4, max_tokens=3000
    )
    full = train_dictionary(tiny, TEXTS, tmp_path / "a.safetensors", config)

    real_fit = trainer._fit_layer

    def interrupted(sample, layer, *args, **kwargs):
        if layer == 1:
            raise KeyboardInterrupt
        return real_fit(sample, layer, *args, **kwargs)

    monkeypatch.setattr(trainer, "_fit_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_dictionary(tiny, TEXTS, tmp_path / "b.safetensors", config)
    assert sorted(p.name for p in (tmp_path / "b.safetensors.work").iterdir()) == [
        "config.json",
        "layer_000.safetensors",
        "vectors.safetensors",
    ]
    assert not (tmp_path / "b.safetensors").exists()
    monkeypatch.setattr(trainer, "_fit_layer", real_fit)
    resumed = train_dictionary(tiny, TEXTS, tmp_path / "b.safetensors", config)
    assert torch.equal(resumed.keys, full.keys) and torch.equal(resumed.values, full.values)
    loaded = LexicoDictionary.load(tmp_path / "b.safetensors")
    assert loaded.meta.num_layers == 2 and loaded.meta.head_dim == 16 and loaded.meta.atoms == 32
    held = loaded.meta.heldout
    assert set(held["keys"]) == {"4", "8", "16"} and len(held["per_layer"]) == 2
    assert held["keys"]["16"] <= held["keys"]["4"]


def test_trainer_refuses_other_settings_in_workdir(tiny, tmp_path):
    config = TrainConfig(
        atoms=32, sparsity=4, iters=1, max_vectors=600, max_heldout=200, window=128, heldout_every=4, max_tokens=3000
    )
    train_dictionary(tiny, TEXTS, tmp_path / "a.safetensors", config)
    other = TrainConfig(
        atoms=64, sparsity=4, iters=1, max_vectors=600, max_heldout=200, window=128, heldout_every=4, max_tokens=3000
    )
    with pytest.raises(LexicoError, match="other settings \\(atoms\\)"):
        train_dictionary(tiny, TEXTS, tmp_path / "a.safetensors", other, workdir=tmp_path / "a.safetensors.work")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"atoms": 1}, "--atoms"),
        ({"sparsity": 0}, "--sparsity"),
        ({"atoms": 4096, "max_vectors": 100}, "--max-vectors"),
    ],
)
def test_config_ranges(kwargs, match):
    with pytest.raises(LexicoError, match=match):
        TrainConfig(**kwargs)


def test_pre_rope_keys_with_values_from_another_dictionary(tiny, tmp_path):
    """--key-space pre-rope fits keys on un-rotated vectors; --values-from copies the donor's value atoms."""
    config = TrainConfig(
        atoms=32,
        sparsity=4,
        iters=2,
        max_vectors=600,
        max_heldout=200,
        window=128,
        heldout_every=4,
        max_tokens=3000,
        key_space="post_rope",
    )
    donor = train_dictionary(tiny, TEXTS, tmp_path / "post.safetensors", config)
    pre_config = TrainConfig(
        **{**config.__dict__, "key_space": "pre_rope", "values_from": str(tmp_path / "post.safetensors")}
    )
    pre = train_dictionary(tiny, TEXTS, tmp_path / "pre.safetensors", pre_config)
    loaded = LexicoDictionary.load(tmp_path / "pre.safetensors")
    assert loaded.meta.key_space == "pre_rope" and donor.meta.key_space == "post_rope"
    assert torch.equal(loaded.values, LexicoDictionary.load(tmp_path / "post.safetensors").values)
    assert not torch.allclose(pre.keys, donor.keys)
    assert loaded.fingerprint() != LexicoDictionary(loaded.keys, loaded.values, donor.meta).fingerprint()
    wrong = TrainConfig(**{**pre_config.__dict__, "atoms": 16, "max_vectors": 600})
    with pytest.raises(LexicoError, match="N=32 atoms"):
        train_dictionary(tiny, TEXTS, tmp_path / "x.safetensors", wrong)
    with pytest.raises(LexicoError, match="--key-space"):
        TrainConfig(key_space="rotated")
