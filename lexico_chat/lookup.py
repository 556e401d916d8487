"""Finding the dictionary for a model: --dictionary PATH, then the package's dictionaries/, then the
user cache folder."""

from __future__ import annotations

import os
from pathlib import Path

from lexico_chat.dictionary import LexicoDictionary, model_slug
from lexico_chat.errors import LexicoError, MissingDictionaryError
from lexico_chat.models import DEFAULT_MODEL_ID, ModelDims

__all__ = ["dictionary_filename", "find_dictionary", "search_folders", "user_dictionary_folder"]

_PACKAGE_ROOT = Path(__file__).resolve().parent


def dictionary_filename(model_id: str, atoms: int) -> str:
    return f"{model_slug(model_id)}-N{atoms}.safetensors"


def user_dictionary_folder() -> Path:
    """``$LEXICO_CHAT_HOME/dictionaries``, else ``$XDG_CACHE_HOME/lexico-chat/dictionaries`` (~/.cache)."""
    home = os.environ.get("LEXICO_CHAT_HOME")
    if home:
        return Path(home).expanduser() / "dictionaries"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "lexico-chat" / "dictionaries"


def search_folders() -> list[Path]:
    """The package's shipped dictionaries (source tree or installed wheel), then the user folder."""
    return [_PACKAGE_ROOT.parent / "dictionaries", _PACKAGE_ROOT / "_dictionaries", user_dictionary_folder()]


def train_command(model_id: str, atoms: int, sparsity: int = 8) -> str:
    """The exact command that trains the missing dictionary into the user folder."""
    out = user_dictionary_folder() / dictionary_filename(model_id, atoms)
    model = "" if model_id == DEFAULT_MODEL_ID else f"--model {model_id} "
    flags = f"--corpus FILE [FILE ...] --atoms {atoms} --sparsity {sparsity} --out {out}"
    return f"lexico-chat train-dictionary {model}{flags}"


def training_estimate(dims: ModelDims, atoms: int, iters: int = 10, vectors: int = 100_000) -> str:
    """Rough wall time of a default training run: OMP dominates, ~2·layers·iters·vectors encodings.

    Reference rates measured with ``lexico-chat eval omp-speed``-style runs at s=8: about 30k vectors/s
    on 2 CPU cores and 2M on a data-centre GPU at (m=64, N=4096), scaling with m·N.
    """
    work = 2 * dims.num_layers * iters * vectors * (dims.head_dim / 64) * (atoms / 4096)
    cpu_min, gpu_min = work / 30_000 / 60, work / 2_000_000 / 60
    return f"about {cpu_min:.0f} min on 2 CPU cores, {max(gpu_min, 1):.0f} min on a GPU, plus reading the corpus"


def find_dictionary(
    model_id: str, dims: ModelDims, atoms: int, path: str | os.PathLike | None = None
) -> LexicoDictionary:
    """Load the dictionary for ``model_id`` with ``atoms`` atoms and check it against ``dims``.

    Raises MissingDictionaryError (with the exact train-dictionary command) when none is found, LexicoError
    when ``path`` does not exist or the file does not fit the model.
    """
    if path is not None:
        candidates = [Path(path).expanduser()]
        if not candidates[0].is_file():
            raise LexicoError(f"dictionary file not found: {path}")
    else:
        name = dictionary_filename(model_id, atoms)
        candidates = [folder / name for folder in search_folders() if (folder / name).is_file()]
        if not candidates:
            raise _missing(model_id, dims, atoms, name)
    dictionary = LexicoDictionary.load(candidates[0])
    dictionary.check_model(model_id, dims.num_layers, dims.num_kv_heads, dims.head_dim, source=str(candidates[0]))
    if path is None and dictionary.meta.atoms != atoms:
        raise LexicoError(f"{candidates[0]} has {dictionary.meta.atoms} atoms, not the {atoms} asked for")
    return dictionary


def _missing(model_id: str, dims: ModelDims, atoms: int, name: str) -> MissingDictionaryError:
    command, estimate = train_command(model_id, atoms), training_estimate(dims, atoms)
    folders = ", ".join(str(f) for f in search_folders())
    message = (
        f"no dictionary with {atoms} atoms for {model_id} (looked for {name} in {folders}); "
        f"train one ({estimate}) with: {command}"
    )
    return MissingDictionaryError(message, model_id=model_id, atoms=atoms, command=command, estimate=estimate)
