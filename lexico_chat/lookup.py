"""Finding the dictionary for a model: --dictionary PATH, then the package's dictionaries/, then the
user cache folder; and listing every dictionary there (``lexico-chat dictionaries``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lexico_chat.dictionary import DictionaryMeta, LexicoDictionary, model_slug
from lexico_chat.errors import LexicoError, MissingDictionaryError
from lexico_chat.models import DEFAULT_MODEL_ID, ModelDims
from lexico_chat.paths import user_cache_folder

__all__ = [
    "DictionaryFile",
    "dictionary_filename",
    "find_dictionary",
    "list_dictionaries",
    "missing_dictionary",
    "search_folders",
    "train_command",
    "user_dictionary_folder",
]

_PACKAGE_ROOT = Path(__file__).resolve().parent


def dictionary_filename(model_id: str, atoms: int) -> str:
    return f"{model_slug(model_id)}-N{atoms}.safetensors"


def user_dictionary_folder() -> Path:
    """``dictionaries/`` of the user cache folder (``$LEXICO_CHAT_HOME``, else ``~/.cache/lexico-chat``)."""
    return user_cache_folder() / "dictionaries"


def search_folders() -> list[Path]:
    """The package's shipped dictionaries (source tree or installed wheel), then the user folder."""
    return [_PACKAGE_ROOT.parent / "dictionaries", _PACKAGE_ROOT / "_dictionaries", user_dictionary_folder()]


def train_command(model_id: str, atoms: int, sparsity: int = 8) -> str:
    """The exact command that trains the missing dictionary into the user folder (on the bundled corpus)."""
    out = user_dictionary_folder() / dictionary_filename(model_id, atoms)
    model = "" if model_id == DEFAULT_MODEL_ID else f"--model {model_id} "
    return f"lexico-chat train-dictionary {model}--atoms {atoms} --sparsity {sparsity} --out {out}"


def find_dictionary(
    model_id: str, dims: ModelDims, atoms: int, path: str | os.PathLike | None = None, sparsity: int = 8
) -> LexicoDictionary:
    """Load the dictionary for ``model_id`` with ``atoms`` atoms and check it against ``dims``.

    Raises MissingDictionaryError (with the exact train-dictionary command, at ``sparsity``) when none is
    found, LexicoError when ``path`` does not exist or the file does not fit the model.
    """
    if path is not None:
        candidates = [Path(path).expanduser()]
        if not candidates[0].is_file():
            raise LexicoError(f"dictionary file not found: {path}")
    else:
        name = dictionary_filename(model_id, atoms)
        candidates = [folder / name for folder in search_folders() if (folder / name).is_file()]
        if not candidates:
            raise missing_dictionary(model_id, atoms, sparsity)
    dictionary = LexicoDictionary.load(candidates[0])
    dictionary.check_model(model_id, dims.num_layers, dims.num_kv_heads, dims.head_dim, source=str(candidates[0]))
    if path is None and dictionary.meta.atoms != atoms:
        raise LexicoError(f"{candidates[0]} has {dictionary.meta.atoms} atoms, not the {atoms} asked for")
    return dictionary


def missing_dictionary(
    model_id: str, atoms: int, sparsity: int = 8, estimate: str = "", offer: object | None = None
) -> MissingDictionaryError:
    """The error for a model without a dictionary of ``atoms`` atoms: where it looked, the command, and the
    ``estimate`` and ``offer`` of first-run training where the caller has them."""
    name, command = dictionary_filename(model_id, atoms), train_command(model_id, atoms, sparsity)
    folders = ", ".join(str(f) for f in search_folders())
    took = f" ({estimate})" if estimate else ""
    now = "rerun with --train-dictionary-if-missing or " if offer is not None else ""
    message = f"no dictionary with {atoms} atoms for {model_id} (looked for {name} in {folders}); {now}train one{took}"
    message += f" with: {command}"
    return MissingDictionaryError(
        message, model_id=model_id, atoms=atoms, command=command, estimate=estimate, offer=offer
    )


@dataclass(frozen=True)
class DictionaryFile:
    """A dictionary file found in ``search_folders()``: its metadata (tensors not read) and size."""

    path: Path
    meta: DictionaryMeta
    size_bytes: int

    @property
    def shipped(self) -> bool:
        return self.path.parent != user_dictionary_folder()

    @property
    def found_by_lookup(self) -> bool:
        """The file name is the one ``find_dictionary`` looks for (other files need ``--dictionary``)."""
        return self.path.name == dictionary_filename(self.meta.model_id, self.meta.atoms)


def list_dictionaries() -> list[DictionaryFile]:
    """Every readable dictionary file in the search folders, in search order (unreadable files are skipped)."""
    found = []
    for folder in search_folders():
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            try:
                found.append(DictionaryFile(path, LexicoDictionary.read_meta(path), path.stat().st_size))
            except LexicoError:
                continue
    return found
