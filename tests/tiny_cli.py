"""Helpers for tests that drive the chat command line on a tiny model (no tests here): a tiny Llama with the
one-character-per-token ChatML tokenizer, its random dictionary on disk, ``main()`` run in-process with the
model load replaced by the tiny model (the rest of the command runs as a user would run it), and a model
folder for the few tests that run the command in a subprocess."""

from __future__ import annotations

from pathlib import Path

from lexico_chat.cli import main
from lexico_chat.models import LoadedModel
from tests.conftest import build_tiny_model, random_dictionary
from tests.test_server_support import char_tokenizer

MODEL_ID = "tiny"
FLAGS = ["--atoms", "64", "--sparsity", "4", "--buffer", "16", "--window", "8"]
"""Cache flags of the tiny sessions: 16 buffered tokens, compressed 8 at a time."""


def tiny_loaded(arch: str = "llama", seed: int = 0) -> LoadedModel:
    """A fresh tiny model with the character tokenizer, as ``load_model`` would return it."""
    return LoadedModel(build_tiny_model(arch, seed=seed), char_tokenizer(), MODEL_ID)


def save_dictionary(loaded: LoadedModel, folder: Path, key_space: str = "post_rope") -> Path:
    """The tiny model's random dictionary (64 atoms) written to ``folder``."""
    return random_dictionary(loaded.model, key_space=key_space).save(folder / f"{MODEL_ID}-N64-{key_space}.safetensors")


def serve_tiny_model(monkeypatch, loaded: LoadedModel) -> None:
    """Make every ``load_model`` call of the command line return ``loaded`` (the weights load is all it skips)."""
    monkeypatch.setattr("lexico_chat.models.load_model", lambda spec=None, **kwargs: loaded)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``lexico-chat ARGV`` in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2 and exactly one line on stderr, no traceback, mentioning every needle."""
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def save_model_folder(loaded: LoadedModel, folder: Path) -> Path:
    """``loaded`` as a Hugging Face model folder named like its dictionary's model id (for subprocess runs)."""
    path = folder / MODEL_ID
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path
