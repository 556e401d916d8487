"""The command line on a tiny model: honest ratios in ``--json`` and errors that say what happened (a document
path that is a folder or a FIFO, a session of the other cache kind, an empty prompt or corpus), refused
before the model loads where the model is not needed to tell."""

from __future__ import annotations

import json
import os

import pytest
import torch

from lexico_chat.cache import LexicoCache
from lexico_chat.config import CacheConfig
from lexico_chat.memory import cache_memory
from tests.conftest import random_dictionary
from tests.tiny_cli import FLAGS, assert_one_line_error, run_cli, save_dictionary, serve_tiny_model, tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = CacheConfig(sparsity=4, atoms=64, buffer=16, window=8)


@pytest.fixture(scope="module")
def loaded():
    return tiny_loaded()


@pytest.fixture()
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for a mistake it was not needed to find")

    monkeypatch.setattr("lexico_chat.models.load_model", refuse)


@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
def test_kv_fraction_of_a_lexico_cache_under_an_fp32_model(loaded, key_space):
    """The buffer is held in fp16 under the fp32 CPU model, so the cache never holds more than the fp16 cache it
    is compared with, in either key space: a pre-RoPE cache stores the rotation of compressed tokens only (a
    buffered token's is recomputed from its position when it is coded), so until its first window is compressed
    (at buffer + window + 1 tokens) it holds exactly the fp16 buffer."""
    cache = LexicoCache.from_model(loaded.model, random_dictionary(loaded.model, key_space=key_space), CONFIG)
    ids = torch.randint(3, 128, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for t in range(ids.shape[1]):
            loaded.model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            memory = cache_memory(cache)
            assert memory.buffer_bytes == memory.buffer_tokens * 2 * 2 * 16 * 2 * 4  # fp16: 2 B, K+V, 2 heads, 4 layers
            assert memory.kv_fraction <= 1.0 + 1e-9, (t, memory.kv_fraction)
            if not memory.compressed_tokens:
                assert memory.rope_bytes == 0 and memory.kv_fraction == pytest.approx(1.0)
            assert (memory.compressed_tokens > 0) == (t + 1 > CONFIG.buffer + CONFIG.window)
    assert memory.kv_fraction < 0.8


@pytest.mark.parametrize("key_space", ["post_rope", "pre_rope"])
def test_json_stats_after_the_buffer_filled(loaded, key_space, tmp_path, monkeypatch, capsys):
    serve_tiny_model(monkeypatch, loaded)
    dictionary = save_dictionary(loaded, tmp_path, key_space)
    argv = ["--dictionary", dictionary, *FLAGS, "--max-new-tokens", "8", "--json"]
    code, out, err = run_cli(capsys, *argv, "--prompt", "Tell me about the sea, the wind and the long roads home.")
    assert code == 0, err
    stats = json.loads(out)["stats"]
    assert stats["tokens_compressed"] > 0 and stats["tokens_buffer"] >= CONFIG.buffer
    assert stats["kv_fraction"] == pytest.approx(stats["kv_bytes"] / stats["fp16_bytes"]) and stats["kv_fraction"] < 1


def test_an_empty_prompt_is_refused_before_the_model_loads(no_model, capsys):
    code, _, err = run_cli(capsys, "--prompt", " \n ")
    assert_one_line_error(code, err, "--prompt is empty")


def test_a_document_that_is_a_folder_or_a_fifo_says_so(no_model, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # reading it would block: it must never be opened
    assert_one_line_error(*run_cli(capsys, "--doc", tmp_path, "--prompt", "hi")[::2], f"{tmp_path} is a directory")
    assert_one_line_error(*run_cli(capsys, "--doc", fifo, "--prompt", "hi")[::2], "not a regular file (a FIFO")
    missing = tmp_path / "missing.txt"
    assert_one_line_error(*run_cli(capsys, "--doc", missing, "--prompt", "hi")[::2], f"text file not found: {missing}")


def test_a_session_or_dictionary_path_that_is_a_folder_says_so(no_model, tmp_path, capsys):
    code, _, err = run_cli(capsys, "--resume", tmp_path, "--prompt", "hi")
    assert_one_line_error(code, err, f"{tmp_path} is a directory; give a session file")
    code, _, err = run_cli(capsys, "--dictionary", tmp_path, "--prompt", "hi")
    assert_one_line_error(code, err, f"{tmp_path} is a directory; give a dictionary file")


def test_a_session_of_the_other_cache_kind_says_so(loaded, tmp_path, monkeypatch, capsys):
    serve_tiny_model(monkeypatch, loaded)
    dictionary = save_dictionary(loaded, tmp_path)
    saved = tmp_path / "full.lexico"
    argv = ["--dictionary", dictionary, *FLAGS, "--max-new-tokens", "2"]
    assert run_cli(capsys, *argv, "--cache", "full", "--prompt", "Hi", "--save", saved)[0] == 0
    code, _, err = run_cli(capsys, *argv, "--cache", "lexico", "--resume", saved, "--prompt", "Go on.")
    assert_one_line_error(code, err, f"{saved} holds a full cache, this session uses a lexico cache")
    assert "dictionary" not in err


def test_an_empty_corpus_is_named_before_the_settings(no_model, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("  \n")
    argv = ["train-dictionary", "--corpus", corpus, "--out", tmp_path / "d.safetensors", "--max-vectors", "10"]
    assert_one_line_error(*run_cli(capsys, *argv)[::2], f"{corpus} is empty")
