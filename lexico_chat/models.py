"""Loading models: the embedded default, local folders, .gguf files, Hugging Face cache folders and hub ids.

``--model`` is resolved by ``lexico_chat.resolve`` and the device chosen by ``lexico_chat.device``; a GGUF is
converted once to a safetensors folder (``lexico_chat.model_cache``) and loaded from there afterwards.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lexico_chat.device import Placement, select_device
from lexico_chat.errors import LexicoError
from lexico_chat.heap import retain_freed_memory
from lexico_chat.model_cache import converted_folder, save_converted
from lexico_chat.resolve import DEFAULT_MODEL_ID, ModelSource, default_gguf_path, resolve_model

__all__ = ["DEFAULT_MODEL_ID", "LoadedModel", "ModelDims", "default_gguf_path", "load_model", "model_dims"]

logger = logging.getLogger(__name__)

Status = Callable[[str], None]  # what the load is doing now, for a UI ("converting ... (first run only)")


@dataclass(frozen=True)
class ModelDims:
    """Shape facts of a decoder that the KV cache depends on."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_positions: int


@dataclass
class LoadedModel:
    """A model ready for inference, its tokenizer and the id dictionaries are matched against.

    ``source`` is what the weights were read from (a folder, a .gguf file or a hub id); ``placement`` where
    they went (None for a model built in memory).
    """

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    source: str = ""
    placement: Placement | None = None

    @property
    def dims(self) -> ModelDims:
        return model_dims(self.model.config)

    @property
    def device_label(self) -> str:
        """``cpu``, ``cuda:0``, ``cuda ×2 (device map)``: where the model runs."""
        return self.placement.label if self.placement else str(next(self.model.parameters()).device)


def model_dims(config) -> ModelDims:
    """Layers, KV heads, head_dim and maximum positions of a transformers config (text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelDims(text.num_hidden_layers, kv_heads, head_dim, getattr(text, "max_position_embeddings", 2048))


def load_model(
    spec: str | None = None, *, device: str = "auto", dtype: torch.dtype | None = None, status: Status | None = None
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Parameters
    ----------
    spec : None for the embedded default (SmolLM2-135M-Instruct); a local model folder; a ``.gguf`` file; a
        model name of the Hugging Face cache or of ``resolve.KNOWN_MODELS``; a hub id (where reachable).
    device : "auto" (CUDA GPU(s), else mps, else CPU), "cpu", "cuda", "cuda:N" or "mps".
    dtype : weight dtype; default bf16 on CUDA, fp16 on mps, fp32 on CPU.
    status : called with a line saying what the load is doing (conversion on first use of a GGUF).

    On the CPU it also keeps freed memory in the process (``lexico_chat.heap``): short-lived tensors of a few
    MB are otherwise handed back to the system and faulted in again at every step.
    """
    placement = select_device(device, dtype)
    if placement.device == "cpu":
        retain_freed_memory()
    source = resolve_model(spec)
    report = status or (lambda text: None)
    if source.kind == "hub":
        return _load_hub(source.model_id, placement)
    if not source.is_gguf:
        report(f"loading {source.model_id}…")
        return _load(source.location, None, source.model_id, placement)
    return _load_gguf(Path(source.location), source, placement, report)


def _load_gguf(gguf: Path, source: ModelSource, placement: Placement, report: Status) -> LoadedModel:
    """From the converted folder when there is one; else convert (fp32 on the CPU) and save the folder."""
    report(f"loading {source.model_id}…")
    folder = converted_folder(gguf)
    if folder.is_dir():
        return _load(str(folder), None, source.model_id, placement)
    report(f"converting {gguf.name} to safetensors (first run only)…")
    cpu = Placement("cpu", torch.float32)
    loaded = _load(str(gguf.parent), gguf.name, source.model_id, cpu)
    try:
        save_converted(folder, gguf, loaded.model, loaded.tokenizer)
    except OSError as err:  # a full or read-only cache only costs the next start its speed
        logger.warning("could not cache the converted model in %s: %s", folder, err)
        return _placed(loaded.model, loaded.tokenizer, source.model_id, str(gguf), placement)
    if placement == cpu:
        return loaded
    del loaded  # a GPU (or a device map) loads the folder just written, as every later start will
    return _load(str(folder), None, source.model_id, placement)


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers unless -v asked for them."""
    from transformers.utils import logging as hf_logging

    if not logger.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _load(location: str, gguf_file: str | None, model_id: str, placement: Placement) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    quiet = (
        contextlib.redirect_stderr(io.StringIO())
        if gguf_file and not logger.isEnabledFor(logging.INFO)
        else contextlib.nullcontext()
    )  # the GGUF converter draws an unconditional progress bar
    try:
        with quiet:
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=placement.dtype, device_map=placement.device_map, **kwargs
            )
    except (OSError, ValueError) as err:
        raise LexicoError(f"cannot load model from {location}: {err}".splitlines()[0]) from None
    return _placed(model, tokenizer, model_id, os.path.join(location, gguf_file or ""), placement)


def _placed(model, tokenizer, model_id: str, source: str, placement: Placement) -> LoadedModel:
    if placement.device_map is None:
        model = model.to(placement.device, placement.dtype)
    model.eval()
    logger.info("loaded %s from %s on %s (%s)", model_id, source, placement.label, placement.dtype)
    return LoadedModel(model, tokenizer, model_id, source.rstrip(os.sep), placement)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_hub(model_id: str, placement: Placement) -> LoadedModel:
    try:  # a copy already in the local hub cache needs no network
        return _from_hub(model_id, placement, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: fall through to the network
        pass
    if not _hub_reachable():
        raise LexicoError(
            f"'{model_id}' is not a local path and the Hugging Face hub is unreachable (offline); "
            "pass a local model folder or a .gguf file with --model"
        )
    try:
        return _from_hub(model_id, placement, local_files_only=False)
    except Exception as err:  # noqa: BLE001 - hub failures come as many exception types
        raise LexicoError(
            f"cannot fetch '{model_id}' from the Hugging Face hub ({type(err).__name__}: unknown id or no access); "
            "pass a local model folder or a .gguf file with --model"
        ) from None


def _from_hub(model_id: str, placement: Placement, local_files_only: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_id, local_files_only=local_files_only)
    model = AutoModelForCausalLM.from_pretrained(
        model_id, dtype=placement.dtype, device_map=placement.device_map, local_files_only=local_files_only
    )
    return _placed(model, tokenizer, model_id, model_id, placement)
