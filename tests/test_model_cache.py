"""GGUF files are converted once to a safetensors folder in the user cache and loaded from there afterwards:
found by the file's path, size and mtime, else by its sha256; written atomically; the real default model
gives the same logits from the folder as from its GGUF."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lexico_chat import models
from lexico_chat.atomic import write_folder_atomic
from lexico_chat.device import Placement
from lexico_chat.errors import LexicoError
from lexico_chat.model_cache import SOURCE_FILE, converted_folder, file_sha256, models_folder, save_converted
from lexico_chat.models import DEFAULT_MODEL_ID, default_gguf_path, load_model
from tests.conftest import build_tiny_model
from tests.test_server_support import char_tokenizer

IDS = torch.tensor([[5, 17, 33, 2, 90, 64, 7]])


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path / "home"))
    return tmp_path


def _logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(IDS.to(next(model.parameters()).device)).logits.float().cpu()


def test_a_converted_folder_is_found_by_stat_then_by_hash(home):
    """A stand-in .gguf (its bytes are no model) with a converted folder: load_model never reads the file as a
    GGUF, it loads the folder; a touched file is found again by its hash; other bytes are another model."""
    gguf = home / "Tiny.Q4_0.gguf"
    gguf.write_bytes(b"stand-in bytes " * 1000)
    model = build_tiny_model("llama", seed=4)
    folder = save_converted(converted_folder(gguf), gguf, model, char_tokenizer())
    assert folder.parent == models_folder() and folder.name == f"Tiny.Q4_0-{file_sha256(gguf)[:16]}"
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["sha256"] == file_sha256(gguf) and source["size"] == gguf.stat().st_size
    loaded = load_model(str(gguf), device="cpu")
    assert loaded.source == str(folder) and loaded.model_id == "Tiny.Q4_0"
    assert torch.equal(_logits(loaded.model), _logits(model))
    os.utime(gguf, ns=(1, 1))  # same bytes, other mtime: the stat record misses, the hash finds it
    assert converted_folder(gguf) == folder
    gguf.write_bytes(b"other bytes " * 1000)
    assert converted_folder(gguf) != folder
    with pytest.raises(LexicoError, match="cannot load model from"):
        load_model(str(gguf), device="cpu")  # a new file is converted, and this one is no GGUF
    assert sorted(p.name for p in models_folder().iterdir()) == [folder.name]  # nothing half-written


def test_folder_write_is_atomic(tmp_path):
    target = tmp_path / "models" / "m"

    def fail(tmp: Path) -> None:
        (tmp / "part.bin").write_bytes(b"x" * 100)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomic(target, fail)
    assert list((tmp_path / "models").iterdir()) == []
    write_folder_atomic(target, lambda tmp: (tmp / "a.txt").write_text("first"))
    write_folder_atomic(target, lambda tmp: (tmp / "a.txt").write_text("second"))  # another process was first
    assert (target / "a.txt").read_text() == "first" and len(list((tmp_path / "models").iterdir())) == 1


@pytest.mark.slow
def test_default_model_second_load_comes_from_the_folder_with_the_same_logits(default_model):
    gguf = default_gguf_path()
    if default_model.source == str(gguf):  # the session's first load converted: it is the GGUF load
        direct = default_model
    else:
        direct = models._load(str(gguf.parent), gguf.name, DEFAULT_MODEL_ID, Placement("cpu", torch.float32))
    again = load_model(device="cpu")
    folder = converted_folder(gguf)
    assert again.source == str(folder) and folder.is_dir() and again.model_id == DEFAULT_MODEL_ID
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert torch.equal(_logits(again.model), _logits(direct.model))
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    assert again.tokenizer(text)["input_ids"] == direct.tokenizer(text)["input_ids"]
    assert again.tokenizer.chat_template == direct.tokenizer.chat_template
