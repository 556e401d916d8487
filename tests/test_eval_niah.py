"""`eval niah`: scoring on canned replies, needle placement, trial bookkeeping, and a real ChatSession run."""

import re

import pytest
import torch

from lexico_chat.config import CacheConfig
from lexico_chat.evals.niah import NEEDLE, needle_found, needle_number, niah_eval, plant_needle, plot_niah
from lexico_chat.models import LoadedModel
from tests.conftest import identity_dictionary

HAYSTACK = "The cat sat on the mat. It was warm! Dogs barked far away. Rain fell on the hills.\n"


def char_tokenizer():
    """A real (fast) tokenizer with one token per ASCII character, <|im_start|>/<|im_end|> and a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for ch in "\n" + "".join(chr(i) for i in range(32, 127)):
        vocab[ch] = len(vocab)  # 99 ids, inside the tiny models' 128
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


@pytest.mark.parametrize(
    "reply, found",
    [
        ("The special magic number is 48213.", True),
        ("48213", True),
        ("It is 48,213!", True),
        ("48 213", True),
        ("482130", False),
        ("148213", False),
        ("4821", False),
        ("The number is 48231.", False),
        ("", False),
    ],
)
def test_needle_found_on_canned_replies(reply, found):
    assert needle_found(reply, 48213) is found


def test_needle_numbers_are_seeded_five_digit_numbers():
    first = [needle_number(0, t) for t in range(20)]
    assert first == [needle_number(0, t) for t in range(20)]
    assert first != [needle_number(1, t) for t in range(20)]
    assert all(10_000 <= n <= 99_999 for n in first) and len(set(first)) > 15


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_needle_lands_at_a_sentence_end_near_its_depth(depth):
    tokenizer = char_tokenizer()
    needle = NEEDLE.format(number=12345)
    length = 400
    doc = plant_needle(tokenizer, HAYSTACK, length, depth, needle)
    assert doc.count(needle) == 1
    assert abs(len(doc) - length) <= 2  # one token per character; whitespace around the needle trimmed
    before = doc[: doc.index(needle)]
    budget = length - len(" " + needle)
    if depth == 0.0:
        assert before == ""
    elif depth == 1.0:
        assert before.rstrip() == ((HAYSTACK * 5)[:budget]).rstrip()
    else:
        cut = round(depth * budget)
        assert re.search(r"[.!?]\s*$", before) and cut - 40 < len(before) <= cut + 1  # sentences are < 40 chars


def test_plant_needle_rejects_bad_arguments():
    from lexico_chat.errors import LexicoError

    with pytest.raises(LexicoError, match="--depths must be in \\[0, 1\\], got 1.5"):
        plant_needle(char_tokenizer(), HAYSTACK, 100, 1.5, "x")
    with pytest.raises(LexicoError, match="--lengths must exceed"):
        plant_needle(char_tokenizer(), HAYSTACK, 5, 0.5, NEEDLE.format(number=1))


class _ReadingSession:
    """Fake session: "full" reads the number from the document; "lexico" answers wrongly."""

    def __init__(self, method):
        self.method, self.cleared = method, 0

    def clear(self):
        self.cleared += 1

    def ask_document(self, path, question, sampling):
        text = open(path).read()
        number = re.search(r"magic number is (\d+)", text).group(1)
        assert sampling.temperature == 0 and "magic number" in question
        yield from (f"It is {number}." if self.method == "full" else "I do not know.")


def test_niah_rows_and_scoring_with_fake_sessions(tmp_path):
    loaded = LoadedModel(torch.nn.Linear(1, 1), char_tokenizer(), "fake")
    loaded.model.config = type("C", (), {"_attn_implementation": "sdpa"})()
    sessions = {}

    def make(method, sparsity):
        sessions[(method, sparsity)] = _ReadingSession(method)
        return sessions[(method, sparsity)]

    result = niah_eval(loaded, HAYSTACK, None, [200, 300], [0.0, 1.0], [4, 8], seed=7, make_session=make)
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 3 and all(s.cleared == 4 for s in sessions.values())
    assert [(r["length"], r["depth"], r["method"], r["setting"]) for r in rows[:3]] == [
        (200, 0.0, "full", "fp16"),
        (200, 0.0, "lexico", "s=4"),
        (200, 0.0, "lexico", "s=8"),
    ]
    assert all(r["found"] == (r["method"] == "full") for r in rows)
    assert str(needle_number(7, 3)) in rows[9]["reply"]  # trial 3 = (300, 1.0)
    plot_niah(result, tmp_path / "niah.png")
    assert (tmp_path / "niah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_niah_through_chat_sessions_on_a_tiny_model(tiny_model):
    from lexico_chat.engine.options import SessionOptions
    from lexico_chat.engine.session import ChatSession, document_prompt
    from lexico_chat.engine.template import render
    from lexico_chat.engine.types import Message
    from lexico_chat.evals.niah import QUESTION
    from tests.conftest import reference_generate

    model, tokenizer = tiny_model("llama"), char_tokenizer()
    loaded = LoadedModel(model, tokenizer, "tiny")
    result = niah_eval(loaded, HAYSTACK, identity_dictionary(model), [150], [0.5], [16], max_new_tokens=6, seed=3)
    full, lexico = result["rows"]
    assert (full["method"], lexico["method"], lexico["setting"]) == ("full", "lexico", "s=16")
    # the full-cache reply is the greedy continuation of exactly the ask_document prompt
    document = plant_needle(tokenizer, HAYSTACK, 150, 0.5, NEEDLE.format(number=needle_number(3, 0)))
    session = ChatSession(loaded, SessionOptions(cache=CacheConfig(kind="full")), dictionary=None)
    prompt = render(tokenizer, session.transcript + [Message("user", document_prompt(document, QUESTION))])
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    generated = reference_generate(model, ids, 6)[0, ids.shape[1] :].tolist()
    stops = [i for i, token in enumerate(generated) if token in session.stop_ids]
    expected = tokenizer.decode(generated[: stops[0] if stops else None], skip_special_tokens=True)
    assert full["reply"] == expected and full["found"] == needle_found(expected, needle_number(3, 0))
