"""`eval niah`: needles and their checks, needle placement, the grid, matched-bytes eviction, the summary, real
ChatSessions of every method on a tiny model against the reference generation, and the command line."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from lexico_chat.config import CacheConfig
from lexico_chat.engine.types import IngestProgress
from lexico_chat.errors import LexicoError
from lexico_chat.evals.compare import CompareSettings, eviction_window
from lexico_chat.evals.needles import (
    NEEDLE,
    PARAPHRASES,
    QUESTION,
    Needle,
    answer_found,
    cell_needles,
    needle_found,
    plant_needle,
)
from lexico_chat.evals.niah import CPU_COST, NiahSettings, estimate_seconds, fit_lengths, niah_eval
from lexico_chat.evals.niah_report import plot_niah, totals_table, wilson_interval
from lexico_chat.models import LoadedModel
from tests.conftest import identity_dictionary

pytestmark = pytest.mark.usefixtures("one_thread")
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


# ----- needles ---------------------------------------------------------------------------------------


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
    assert Needle("number", NEEDLE.format(number=48213), QUESTION, "48213").found(reply) is found


@pytest.mark.parametrize(
    "reply, found",
    [
        ("Inside the blue teapot.", True),
        ("TEAPOT", True),
        ("It is in the teapot, I think", True),
        ("(teapot)", True),
        ("In the teapots.", False),
        ("A teapotful of keys", False),
        ("Under the kettle.", False),
        ("", False),
    ],
)
def test_paraphrase_answer_is_a_whole_word_in_any_case(reply, found):
    assert answer_found(reply, "teapot") is found
    sentence, question, answer = PARAPHRASES[0]
    assert answer == "teapot" and Needle("paraphrase", sentence, question, answer).found(reply) is found


def _long_words(text):
    return {w.lower() for w in re.findall(r"[A-Za-z']+", text) if len(w) >= 5}


@pytest.mark.parametrize("sentence, question, answer", PARAPHRASES)
def test_paraphrase_questions_do_not_share_the_sentence_wording(sentence, question, answer):
    assert answer_found(sentence, answer)  # the answer is what the sentence says
    assert answer.lower() not in question.lower()
    assert not _long_words(sentence) & _long_words(question)


def test_paraphrases_are_twelve_different_objects_and_places():
    assert len(PARAPHRASES) == 12
    assert len({a.lower() for _, _, a in PARAPHRASES}) == 12 and len({q for _, q, _ in PARAPHRASES}) == 12


def test_cell_needles_are_distinct_seeded_and_independent_of_the_grid():
    numbers = cell_needles("number", 0, 1024, 0.5, 3)
    answers = [n.answer for n in numbers]
    assert len(set(answers)) == 3 and all(10_000 <= int(a) <= 99_999 for a in answers)
    assert all(n.sentence == NEEDLE.format(number=n.answer) and n.question == QUESTION for n in numbers)
    assert cell_needles("number", 0, 1024, 0.5, 3) == numbers  # same seed, same needles
    assert [n.answer for n in cell_needles("number", 1, 1024, 0.5, 3)] != answers
    assert [n.answer for n in cell_needles("number", 0, 2048, 0.5, 3)] != answers  # cells differ
    assert cell_needles("number", 0, 1024, 0.5, 2) == numbers[:2]  # --quick's needles: the first of the full grid's
    paraphrases = cell_needles("paraphrase", 0, 1024, 0.5, 12)
    assert sorted((n.sentence, n.question, n.answer) for n in paraphrases) == sorted(PARAPHRASES)
    chosen = {tuple(n.answer for n in cell_needles("paraphrase", 0, 1024, d, 3)) for d in (0, 0.25, 0.5, 0.75, 1)}
    assert len(chosen) > 1  # cells use different triples


def test_cell_needles_reject_bad_counts_and_forms():
    with pytest.raises(LexicoError, match=r"--needles must be in \[1, 12\] for the paraphrase form, got 13"):
        cell_needles("paraphrase", 0, 1024, 0.5, 13)
    assert len(cell_needles("number", 0, 1024, 0.5, 13)) == 13
    with pytest.raises(LexicoError, match=r"--form must be one of \['number', 'paraphrase', 'both'\], got 'word'"):
        cell_needles("word", 0, 1024, 0.5, 1)


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
    with pytest.raises(LexicoError, match="--depths must be in \\[0, 1\\], got 1.5"):
        plant_needle(char_tokenizer(), HAYSTACK, 100, 1.5, "x")
    with pytest.raises(LexicoError, match="--lengths must exceed"):
        plant_needle(char_tokenizer(), HAYSTACK, 5, 0.5, NEEDLE.format(number=1))


# ----- grid ------------------------------------------------------------------------------------------


def _methods(settings):
    return [(m.method, m.setting) for m in settings.methods()]


def test_default_and_quick_grids():
    full = NiahSettings()
    assert (full.lengths, full.depths, full.needles, full.forms) == (
        (1024, 2048, 4096, 8000),
        (0.0, 0.25, 0.5, 0.75, 1.0),
        3,
        ("number", "paraphrase"),
    )
    assert len(full.trials()) == 4 * 5 * 2 * 3
    assert _methods(full) == [
        ("full", "fp16"),
        ("lexico", "s=8"),
        ("lexico", "s=16"),
        ("kivi", "2-bit"),
        ("kivi", "4-bit"),
        ("eviction", "as lexico s=8"),
        ("eviction", "as lexico s=16"),
    ]
    quick = NiahSettings.quick()
    trials = quick.trials()
    assert len(trials) == 2 * 3 * 2 * 2 and {(t.length, t.depth) for t in trials} == {
        (n, d) for n in (1024, 2048) for d in (0.0, 0.5, 1.0)
    }
    assert _methods(quick) == [("full", "fp16"), ("lexico", "s=8"), ("kivi", "2-bit"), ("eviction", "as lexico s=8")]
    assert 10 * 60 <= estimate_seconds(quick, 95) <= 22 * 60  # --quick fits 2 CPU cores in about 10-20 minutes
    wider = NiahSettings.quick(caches=CompareSettings(sparsities=(8, 16), kivi_bits=(2,)))
    assert _methods(wider)[1:3] == [("lexico", "s=8"), ("lexico", "s=16")] and len(wider.methods()) == 6


def test_estimate_is_prefill_plus_reply_per_run():
    settings = NiahSettings(lengths=(1000,), depths=(0.5,), needles=1, forms=("number",))
    expected = sum(1100 * (a + b * 1.1) + reply for a, b, reply in (CPU_COST[m.method] for m in settings.methods()))
    assert estimate_seconds(settings, 100) == pytest.approx(expected, rel=1e-12)
    short = NiahSettings(lengths=(1000,), depths=(0.5,), needles=1, forms=("number",), max_new_tokens=8)
    replies = sum(CPU_COST[m.method][2] for m in settings.methods())
    assert estimate_seconds(settings, 100) - estimate_seconds(short, 100) == pytest.approx(replies / 2)


def test_layer_budget_flag_reaches_the_lexico_sessions_and_labels():
    from lexico_chat.cli import build_parser
    from lexico_chat.evals.niah import _settings

    argv = ["eval", "niah", "--haystack", "h.txt", "--quick", "--sparsity", "4", "8", "--layer-budget", "profile"]
    settings = _settings(build_parser(argv).parse_args(argv))
    assert settings.caches.cache.layer_budget == "profile" and settings.caches.sparsities == (4, 8)
    assert _methods(settings)[1:3] == [("lexico", "s=4 per layer adaptive"), ("lexico", "s=8 per layer")]
    assert _methods(settings)[-1] == ("eviction", "as lexico s=8 per layer")
    argv = argv[:-2]
    assert _settings(build_parser(argv).parse_args(argv)).caches.cache.layer_budget == "auto"


def test_settings_reject_bad_depths_and_needles():
    with pytest.raises(LexicoError, match=r"--depths must be in \[0, 1\], got \[1.5\]"):
        NiahSettings(depths=(0.5, 1.5))
    with pytest.raises(LexicoError, match=r"--needles must be in \[1, 12\] for the paraphrase form, got 20"):
        NiahSettings(needles=20)
    assert NiahSettings(needles=20, forms=("number",)).needles == 20


def test_lengths_fitted_to_the_context():
    assert fit_lengths([1024, 2048, 4096, 8000], 5000, explicit=False) == ([1024, 2048, 4096], [8000])
    assert fit_lengths([1024, 2048], 5000, explicit=True) == ([1024, 2048], [])
    with pytest.raises(LexicoError, match=r"--lengths must be at most 5000 tokens .*, got \[8000\]"):
        fit_lengths([1024, 8000], 5000, explicit=True)
    with pytest.raises(LexicoError, match=r"--lengths must be at most 500 tokens .*, got \[1024, 2048\]"):
        fit_lengths([1024, 2048], 500, explicit=False)


# ----- the run, on fake sessions ---------------------------------------------------------------------

SINK = 2
FAKE = NiahSettings(
    lengths=(200, 300),
    depths=(0.0, 1.0),
    needles=2,
    caches=CompareSettings(sparsities=(4, 8), kivi_bits=(2,), sink=SINK),
)


class _FakeSession:
    """Answers from the document: full and kivi always, lexico the number form only, eviction never. Its cache
    holds s/16 of fp16 bytes (lexico), (sink + window) / tokens (eviction), 0.3 (kivi) until the prefill ends,
    and then 0.9 (as if the reply changed it: the row must show the fraction at the end of the prefill)."""

    def __init__(self, method, value):
        self.method, self.value, self.cleared, self.asked = method, value, 0, 0

    def clear(self):
        self.cleared += 1

    def _fraction(self, tokens):
        if self.method == "lexico":
            return self.value / 16
        return (SINK + self.value) / tokens if self.method == "eviction" else 0.3

    def ask_document(self, path, question, sampling, progress):
        text = open(path).read()
        tokens, self.asked = len(text) + 40, self.asked + 1
        self.cache = SimpleNamespace(memory=lambda: SimpleNamespace(kv_fraction=0.9))
        if self.method != "full":
            fraction = self._fraction(tokens)
            self.cache = SimpleNamespace(memory=lambda: SimpleNamespace(kv_fraction=fraction))
        progress(IngestProgress(tokens // 2, tokens, 10.0))
        progress(IngestProgress(tokens, tokens, 20.0))
        self.cache = SimpleNamespace(memory=lambda: SimpleNamespace(kv_fraction=0.9))
        number = re.search(r"magic number is (\d+)", text)
        triple = next((t for t in PARAPHRASES if t[0] in text), None)
        assert sampling.temperature == 0 and (number is None) != (triple is None)
        assert question == (QUESTION if number else triple[1])
        answer = number.group(1) if number else triple[2]
        knows = self.method in ("full", "kivi") or (self.method == "lexico" and number)
        yield from (f"It is {answer.upper()}." if knows else "I do not know.")


@pytest.fixture(scope="module")
def fake_run():
    loaded = LoadedModel(torch.nn.Linear(1, 1), char_tokenizer(), "fake")
    loaded.model.config = type("C", (), {"_attn_implementation": "sdpa"})()
    sessions = {}

    def make(method, value):
        sessions[(method, value)] = _FakeSession(method, value)
        return sessions[(method, value)]

    return niah_eval(loaded, HAYSTACK, None, FAKE, make_session=make), sessions


def test_rows_cover_every_trial_and_method_in_order(fake_run):
    result, sessions = fake_run
    rows, trials = result["rows"], FAKE.trials()
    assert len(trials) == 2 * 2 * 2 * 2 and len(rows) == len(trials) * 6
    assert [(r["method"], r["setting"]) for r in rows[:6]] == [
        ("full", "fp16"),
        ("lexico", "s=4 adaptive"),
        ("lexico", "s=8"),
        ("kivi", "2-bit"),
        ("eviction", "as lexico s=4 adaptive"),
        ("eviction", "as lexico s=8"),
    ]
    keys = [(r["length"], r["depth"], r["form"], r["trial"], r["answer"]) for r in rows[::6]]
    assert keys == [(t.length, t.depth, t.needle.form, t.index, t.needle.answer) for t in trials]
    assert all(s.cleared == 2 * s.asked for s in sessions.values())  # fresh for every document, emptied after
    assert sum(s.asked for s in sessions.values()) == len(rows)
    for row in rows:
        assert row["found"] == (
            row["method"] in ("full", "kivi") or (row["method"], row["form"]) == ("lexico", "number")
        )
        assert row["seconds"] >= 0 and row["prefill_tps"] == 20.0
        assert set(row) >= {"length", "depth", "form", "needle", "method", "setting", "kv_fraction", "found", "reply"}


def test_eviction_window_matches_the_measured_lexico_bytes(fake_run):
    result, sessions = fake_run
    rows = result["rows"]
    for k in range(0, len(rows), 6):
        full, lexico4, lexico8, kivi, evict4, evict8 = rows[k : k + 6]
        assert (full["kv_fraction"], kivi["kv_fraction"]) == (1.0, 0.3)  # read at the end of the prefill
        assert (lexico4["kv_fraction"], lexico8["kv_fraction"]) == (4 / 16, 8 / 16)
        tokens = full["tokens"]
        assert all(r["tokens"] == tokens for r in rows[k : k + 6])
        for lexico, evict in ((lexico4, evict4), (lexico8, evict8)):
            window = eviction_window(lexico["kv_fraction"], tokens, SINK)
            assert evict["window"] == window == round(lexico["kv_fraction"] * tokens) - SINK
            assert ("eviction", window) in sessions
            assert evict["kv_fraction"] == pytest.approx(lexico["kv_fraction"], abs=0.5 / tokens)


def test_summary_cells_and_totals(fake_run):
    result, _ = fake_run
    cells = {(c["method"], c["setting"], c["length"], c["depth"], c["form"]): c for c in result["cells"]}
    assert len(cells) == 6 * 2 * 2 * 2 and all(c["needles"] == 2 for c in cells.values())
    assert cells[("lexico", "s=4 adaptive", 200, 0.0, "number")]["hits"] == 2
    assert cells[("lexico", "s=4 adaptive", 200, 0.0, "paraphrase")]["hits"] == 0
    assert cells[("lexico", "s=8", 300, 1.0, "number")]["kv_fraction"] == 0.5
    assert all(c["hits"] == 0 for k, c in cells.items() if k[0] == "eviction")
    totals = {(t["method"], t["setting"]): t for t in result["totals"]}
    assert list(totals) == [("full", "fp16"), ("lexico", "s=4 adaptive"), ("lexico", "s=8"), ("kivi", "2-bit")] + [
        ("eviction", "as lexico s=4 adaptive"),
        ("eviction", "as lexico s=8"),
    ]
    lexico = totals[("lexico", "s=4 adaptive")]
    assert (lexico["hits"], lexico["trials"], lexico["hit_rate"]) == (8, 16, 0.5)
    assert lexico["form_hits"] == {"number": 8, "paraphrase": 0}
    assert lexico["ci95"] == pytest.approx(list(wilson_interval(8, 16)))
    assert totals[("full", "fp16")]["hits"] == 16 and totals[("eviction", "as lexico s=8")]["hits"] == 0
    rows = [r for r in result["rows"] if r["method"] == "kivi"]
    assert totals[("kivi", "2-bit")]["wall_s"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert result["wall_s"] >= sum(t["wall_s"] for t in result["totals"])
    assert json.loads(json.dumps(result))["settings"]["caches"]["sink"] == SINK  # JSON-ready as it is


def test_wilson_interval_known_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 3) == pytest.approx((0.0, 0.5615), abs=1e-4)


def test_table_and_heatmaps(fake_run, tmp_path):
    result, _ = fake_run
    lines = totals_table(result).splitlines()
    assert lines[0].split()[:3] == ["method", "setting", "KV"] and len(lines) == 7
    assert lines[2].split()[:7] == [
        "lexico",
        "s=4",
        "adaptive",
        "25.0%",
        "8/16",
        "50%",
        "28-72%",
    ]  # Wilson: 0.280-0.720
    plot_niah(result, tmp_path / "niah.png")
    assert (tmp_path / "niah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----- the run, on real ChatSessions of a tiny model ---------------------------------------------------

TINY = NiahSettings(
    lengths=(150,),
    depths=(0.5,),
    needles=1,
    forms=("number",),
    max_new_tokens=6,
    seed=3,
    caches=CompareSettings(
        sparsities=(4, 16),
        kivi_bits=(2,),
        cache=CacheConfig(buffer=16, window=8, coef_dtype="float32", buffer_dtype="float32"),
        residual=16,
        group=8,
        sink=2,
        eviction_chunk=8,
    ),
)


def _reference_reply(loaded, document, question, tokens, cache=None):
    """(prompt tokens, greedy reply) of transformers' generate on exactly the ask_document prompt."""
    from lexico_chat.engine.options import SessionOptions
    from lexico_chat.engine.session import ChatSession, document_prompt
    from lexico_chat.engine.template import render
    from lexico_chat.engine.types import Message
    from tests.conftest import reference_generate

    tokenizer = loaded.tokenizer
    session = ChatSession(loaded, SessionOptions(cache=CacheConfig(kind="full")), dictionary=None)
    prompt = render(tokenizer, session.transcript + [Message("user", document_prompt(document, question))])
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    generated = reference_generate(loaded.model, ids, tokens, cache=cache)[0, ids.shape[1] :].tolist()
    stops = [i for i, token in enumerate(generated) if token in session.stop_ids]
    return ids.shape[1], tokenizer.decode(generated[: stops[0] if stops else None], skip_special_tokens=True)


@pytest.fixture(scope="module")
def tiny_run(tiny_model):
    model = tiny_model("llama")
    loaded = LoadedModel(model, char_tokenizer(), "tiny")
    result = niah_eval(loaded, HAYSTACK, identity_dictionary(model), TINY)
    return loaded, result


def test_every_method_runs_the_ask_document_path(tiny_run):
    loaded, result = tiny_run
    full, lossy, lossless, kivi, evict4, evict16 = result["rows"]
    needle = TINY.trials()[0].needle
    document = plant_needle(loaded.tokenizer, HAYSTACK, 150, 0.5, needle.sentence)
    tokens, expected = _reference_reply(loaded, document, QUESTION, 6)
    assert all(row["tokens"] == tokens for row in result["rows"]) and tokens < 512  # one prefill chunk
    assert full["reply"] == expected and full["found"] == needle.found(expected)
    assert lossless["reply"] == expected  # s = head_dim over the identity, fp32 codes and buffer: lossless
    _, with_kivi = _reference_reply(loaded, document, QUESTION, 6, cache=TINY.caches.kivi_cache(loaded.model.config, 2))
    assert kivi["reply"] == with_kivi
    assert loaded.model.config._attn_implementation == "sdpa"  # restored after the Lexico sessions


def test_measured_bytes_on_real_caches(tiny_run):
    _, result = tiny_run
    full, lossy, lossless, kivi, evict4, evict16 = result["rows"]
    tokens = full["tokens"]
    compressed = (tokens - 1 - 16) // 8 * 8  # LexicoLayer: whole windows more than `buffer` behind the last token
    index_bytes, coef_bytes = 1.5, 4  # 12-bit indices, fp32 coefficients; fp32 buffer
    per_token = (30 * (index_bytes + coef_bytes) + 4) / 8  # adaptive s=4: 30 atoms and 4 bytes of counts per window
    expected = (compressed * per_token + (tokens - compressed) * 16 * 4) / (tokens * 16 * 2)
    assert lossy["kv_fraction"] == pytest.approx(expected, rel=1e-12)
    window = eviction_window(lossy["kv_fraction"], tokens, 2)
    assert evict4["window"] == window < tokens
    assert evict4["kv_fraction"] == pytest.approx((2 + window) / tokens, rel=1e-12)  # fp16 sink + window, measured
    assert abs(evict4["kv_fraction"] - lossy["kv_fraction"]) <= 0.5 / tokens
    assert evict16["kv_fraction"] == 1.0  # lossless Lexico holds more than fp16: the window keeps every token
    assert 0 < kivi["kv_fraction"] < 1


# ----- command line ----------------------------------------------------------------------------------


def test_cli_refuses_a_length_the_model_cannot_hold(capsys, monkeypatch, tmp_path):
    from lexico_chat.evals.needles import FORMS, questions
    from lexico_chat.evals.niah import prompt_tokens
    from tests.tiny_cli import assert_one_line_error, run_cli, serve_tiny_model, tiny_loaded

    loaded = tiny_loaded()
    serve_tiny_model(monkeypatch, loaded)
    (tmp_path / "hay.txt").write_text(HAYSTACK)
    code, _, err = run_cli(capsys, "eval", "niah", "--haystack", tmp_path / "hay.txt", "--lengths", 300, 2000)
    room = 1024 - prompt_tokens(loaded.tokenizer, questions(FORMS)) - 32 - 16  # context - prompt - reply - slack
    assert_one_line_error(code, err, f"--lengths must be at most {room} tokens", "got [2000]")
    assert 1024 - 32 - 16 - 400 < room < 1024 - 32 - 16 - 2 * len(PARAPHRASES[-1][1])  # the longest question, twice
    code, _, err = run_cli(capsys, "eval", "niah", "--haystack", tmp_path / "hay.txt", "--quick")
    assert_one_line_error(code, err, "--lengths must be at most", "got [1024, 2048]")  # none of --quick's fits


def test_cli_json_on_a_tiny_model(capsys, monkeypatch, tmp_path):
    from tests.tiny_cli import FLAGS, run_cli, save_dictionary, serve_tiny_model, tiny_loaded

    loaded = tiny_loaded()
    serve_tiny_model(monkeypatch, loaded)
    dictionary = save_dictionary(loaded, tmp_path)
    (tmp_path / "hay.txt").write_text(HAYSTACK)
    argv = ["--haystack", tmp_path / "hay.txt", "--lengths", 120, "--depths", 0, 1, "--needles", 1, "--kivi-bits", 2]
    argv += ["--max-new-tokens", 4, "--dictionary", dictionary, *FLAGS, "--json", "--plot", tmp_path / "n.png"]
    code, out, err = run_cli(capsys, "eval", "niah", *argv)
    assert code == 0, err
    assert "niah: 4 trials x 4 caches, ~" in err
    result = json.loads(out)
    assert set(result) == {"settings", "rows", "cells", "totals", "wall_s"}
    assert len(result["rows"]) == 16 and len(result["cells"]) == 4 * 2 * 2 and len(result["totals"]) == 4
    assert [t["setting"] for t in result["totals"]] == ["fp16", "s=4 adaptive", "2-bit", "as lexico s=4 adaptive"]
    assert result["settings"]["caches"]["cache"]["buffer"] == 16 and result["settings"]["forms"] == [
        "number",
        "paraphrase",
    ]
    assert (tmp_path / "n.png").exists()
