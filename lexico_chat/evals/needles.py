"""Needles of `eval niah`: what is planted in the haystack, what is asked, and what counts as found.

Two forms of needle:

* ``number``: "The special magic number is N." (N: five digits), asked as "What is the special magic
  number ...?"; found when N appears in the reply as a whole number (thousands separators allowed).
  The question repeats the needle's wording, so a model can find it by matching words.
* ``paraphrase``: one of ``PARAPHRASES``, (sentence, question, answer) triples whose question says in
  other words what the sentence says ("the extra key for the boat shed" for "the spare key to the
  boathouse"): no word of five letters or more is shared, and the question does not contain the answer.
  Found when the answer appears in the reply as a whole word, in any case.

The needles of one cell (form, length, depth) are drawn from ``random.Random`` seeded with the seed, the
form, the length and the depth: the same seed gives the same needles, they are distinct within a cell,
and a cell's needles do not depend on the rest of the grid (a ``--quick`` cell holds the first needles of
the same cell of the full grid).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from lexico_chat.errors import LexicoError

__all__ = [
    "FORMS",
    "NEEDLE",
    "PARAPHRASES",
    "QUESTION",
    "Needle",
    "answer_found",
    "cell_needles",
    "needle_found",
    "plant_needle",
    "questions",
]

FORMS = ("number", "paraphrase")
NEEDLE = "The special magic number is {number}."
QUESTION = "What is the special magic number mentioned in the document? Answer with the number only."
PARAPHRASES = (  # (planted sentence, question in other words, answer fragment)
    (
        "Ada keeps the spare key to the boathouse inside the blue teapot.",
        "Where can someone find the extra key for the boat shed?",
        "teapot",
    ),
    (
        "Marco hid the wedding rings under a loose floorboard in the attic.",
        "Where did someone conceal the marriage bands?",
        "floorboard",
    ),
    (
        "Priya planted the rare orchids behind the greenhouse near the river.",
        "Where were the uncommon flowers put in the ground?",
        "greenhouse",
    ),
    (
        "Tomas parked his red bicycle beside the bakery on Elm Street.",
        "Next to which shop did the cyclist leave his two-wheeler?",
        "bakery",
    ),
    (
        "The museum guard locked the golden crown in a vault beneath the chapel.",
        "Below which building is the royal headpiece kept safe?",
        "chapel",
    ),
    (
        "Lena buried the time capsule next to the oak tree by the school gate.",
        "Beside what kind of plant was the box of memories put underground?",
        "oak",
    ),
    (
        "Grandpa Joe keeps his lottery tickets inside an old violin case.",
        "Where does the elderly man store his gambling slips?",
        "violin",
    ),
    (
        "The pirates left their treasure map rolled up inside a hollow coconut.",
        "What tropical fruit hides the sea robbers' chart?",
        "coconut",
    ),
    (
        "Nadia stashed the emergency cash behind the bathroom mirror.",
        "Where is the money for a crisis hidden?",
        "mirror",
    ),
    (
        "The chef stores the secret sauce recipe in a locked drawer beneath the oven.",
        "Under which kitchen appliance is the hidden cooking formula kept?",
        "oven",
    ),
    (
        "Felix tied the silver locket to the highest branch of the cherry tree.",
        "On what sort of fruit tree does the metal pendant hang?",
        "cherry",
    ),
    (
        "The captain sealed the ship's logbook inside a wooden barrel of salted herring.",
        "In a container of which fish did the skipper put the voyage journal?",
        "herring",
    ),
)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?\s")


@dataclass(frozen=True)
class Needle:
    """One needle: ``form`` (one of ``FORMS``), the ``sentence`` planted, the ``question`` asked about it and
    the ``answer`` a reply must contain (the five digits, or the paraphrase's answer fragment)."""

    form: str
    sentence: str
    question: str
    answer: str

    def found(self, reply: str) -> bool:
        """Whether ``reply`` holds the answer (a whole number for ``number``, a whole word for ``paraphrase``)."""
        if self.form == "number":
            return needle_found(reply, int(self.answer))
        return answer_found(reply, self.answer)


def needle_found(reply: str, number: int) -> bool:
    """Whether ``number`` appears in ``reply`` as a whole number (thousands separators allowed)."""
    digits = re.sub(r"(?<=\d)[,\u202f ](?=\d{3}\b)", "", reply)
    return re.search(rf"(?<!\d){number}(?!\d)", digits) is not None


def answer_found(reply: str, answer: str) -> bool:
    """Whether ``answer`` appears in ``reply`` as a whole word (or words), ignoring case."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", reply, re.IGNORECASE) is not None


def cell_needles(form: str, seed: int, length: int, depth: float, count: int) -> list[Needle]:
    """The ``count`` distinct needles of one cell (deterministic in all five arguments).

    ``number``: distinct five-digit numbers; ``paraphrase``: distinct triples of ``PARAPHRASES`` (so
    ``count`` <= ``len(PARAPHRASES)``).
    """
    if form not in FORMS:
        raise LexicoError(f"--form must be one of {list(FORMS) + ['both']}, got {form!r}")
    limit = len(PARAPHRASES) if form == "paraphrase" else 90_000
    if not 1 <= count <= limit:
        raise LexicoError(f"--needles must be in [1, {limit}] for the {form} form, got {count}")
    rng = random.Random(f"{seed}:{form}:{length}:{depth:g}")
    if form == "number":
        numbers = rng.sample(range(10_000, 100_000), count)
        return [Needle(form, NEEDLE.format(number=n), QUESTION, str(n)) for n in numbers]
    return [Needle(form, *triple) for triple in rng.sample(PARAPHRASES, count)]


def questions(forms) -> list[str]:
    """Every question a needle of ``forms`` may ask."""
    asked = {"number": [QUESTION], "paraphrase": [question for _, question, _ in PARAPHRASES]}
    return [q for form in forms for q in asked[form]]


def plant_needle(tokenizer, haystack: str, length: int, depth: float, needle: str) -> str:
    """The haystack cut to ``length`` tokens in all with ``needle`` planted at ``depth``.

    Parameters
    ----------
    tokenizer : callable ``tokenizer(text, add_special_tokens=False)["input_ids"]`` with ``decode(ids)``.
    haystack : filler text (repeated when shorter than ``length`` tokens).
    length : tokens of haystack + needle; depth : 0 (start) .. 1 (end), as a fraction of the haystack.
    needle : the sentence planted.

    Returns
    -------
    The document text; the needle follows the last sentence end at or before the depth's token.
    """
    if not 0.0 <= depth <= 1.0:
        raise LexicoError(f"--depths must be in [0, 1], got {depth}")
    hay = tokenizer(haystack, add_special_tokens=False)["input_ids"]
    budget = length - len(tokenizer(" " + needle, add_special_tokens=False)["input_ids"])
    if budget < 1:
        raise LexicoError(f"--lengths must exceed the needle's length in tokens, got {length}")
    if not hay:
        raise LexicoError("the haystack holds no tokens")
    hay = (hay * math.ceil(budget / len(hay)))[:budget]
    cut = round(depth * budget)
    before, after = tokenizer.decode(hay[:cut]), tokenizer.decode(hay[cut:])
    ends = list(_SENTENCE_END.finditer(before))
    if 0 < cut < budget and ends:
        k = ends[-1].end()
        before, after = before[:k], before[k:] + after
    return " ".join(part for part in (before.rstrip(), needle, after.lstrip()) if part)
