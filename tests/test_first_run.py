"""The headline command on a model the project has never seen: a tiny random Llama in a temporary Hugging Face
cache, ``--model TinyName``. Without a dictionary the chat stops with the command and a measured estimate;
``--train-dictionary-if-missing`` trains one on the given corpus (progress on stderr), saves it where the
lookup finds it and answers as a ChatSession with that dictionary does; a second run trains nothing; a
training run killed mid-way resumes to the same dictionary."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lexico_chat.cli import main
from lexico_chat.config import CacheConfig
from lexico_chat.device import select_device
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.engine.options import SessionOptions
from lexico_chat.engine.session import ChatSession
from lexico_chat.engine.types import SamplingConfig
from lexico_chat.models import load_model
from lexico_chat.training.corpus import essay_files
from tests.hf_cache import add_to_cache, tiny_model_folder

CACHE = ["--atoms", "64", "--sparsity", "4", "--buffer", "16", "--window", "8"]
QUESTION = ["--prompt", "Hello there", "--max-new-tokens", "8"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A Hugging Face cache holding tiny-org/TinyName, and a 2,500-character corpus (about as many tokens)."""
    root = tmp_path_factory.mktemp("first-run")
    add_to_cache(root / "hf", "tiny-org/TinyName", tiny_model_folder(root / "files"))
    corpus = root / "corpus.txt"
    corpus.write_text(essay_files()[1].read_text()[:2500])
    return root, ["--model", "TinyName", *CACHE, "--corpus", str(corpus), "--train-budget", "0.001"]


def _homes(root, monkeypatch, name: str):
    home = root / name
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(home))
    return home / "dictionaries" / "TinyName-N64.safetensors"


def _main(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(setup):
    """One uninterrupted first run in its own user cache: (dictionary path, exit code, stdout, stderr)."""
    root, flags = setup
    with pytest.MonkeyPatch.context() as monkeypatch:
        path = _homes(root, monkeypatch, "home-a")
        code, out, err = _main(*flags, "--train-dictionary-if-missing", *QUESTION)
    return path, code, out, err


def _reference_reply(dictionary_path) -> str:
    options = SessionOptions(cache=CacheConfig(sparsity=4, atoms=64, buffer=16, window=8))
    session = ChatSession(load_model("TinyName"), options, LexicoDictionary.load(dictionary_path))  # auto, as the CLI
    return "".join(session.send("Hello there", SamplingConfig(max_new_tokens=8)))


def test_missing_dictionary_says_how_to_train_it_in_one_line(setup, monkeypatch, capsys):
    root, flags = setup
    path = _homes(root, monkeypatch, "home-none")
    assert main([*flags, *QUESTION]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    command = f"lexico-chat train-dictionary --model tiny-org/TinyName --atoms 64 --sparsity 4 --out {path}"
    assert err.endswith(command) and "--train-dictionary-if-missing" in err
    assert " s on cpu)" in err or " min on cpu)" in err  # the probe's estimate
    assert not path.exists()


def test_train_if_missing_trains_then_answers_like_a_session_with_that_dictionary(setup, trained, monkeypatch):
    root, _ = setup
    path, code, out, err = trained
    assert code == 0, err
    assert "training one now; 6,000 vectors × 4 rounds per layer" in err  # the lightest rung: a tiny budget
    assert "fitting layer 3 values" in err and "1000/1000" in err  # the progress bar reached the end
    assert f"dictionary saved to {path}; held-out relative error at s=4: keys " in err
    assert not path.with_name(path.name + ".work").exists()
    dictionary = LexicoDictionary.load(path)
    meta = dictionary.meta
    assert (meta.model_id, meta.atoms, meta.train_sparsity, meta.key_space) == ("tiny-org/TinyName", 64, 4, "pre_rope")
    assert 0 < meta.heldout["keys"]["4"] < meta.heldout["sampled_keys"]["4"]  # better than sampled vectors
    _homes(root, monkeypatch, "home-a")
    assert out.strip() and out.rstrip("\n") == _reference_reply(path)


def test_second_run_finds_the_dictionary_and_does_not_train(setup, trained, monkeypatch):
    root, flags = setup
    path, _, first_out, _ = trained
    _homes(root, monkeypatch, "home-a")
    before = path.stat().st_mtime_ns
    code, out, err = _main(*flags, "--train-dictionary-if-missing", *QUESTION, "--json")
    assert code == 0 and "training" not in err and path.stat().st_mtime_ns == before
    result = json.loads(out)
    assert result["reply"] == first_out.rstrip("\n")
    assert (result["stats"]["device"], result["stats"]["model_id"]) == (select_device().label, "tiny-org/TinyName")


def test_killed_training_resumes_to_the_same_dictionary(setup, trained, monkeypatch):
    root, flags = setup
    path = _homes(root, monkeypatch, "home-killed")
    work = path.with_name(path.name + ".work")
    command = [sys.executable, "-m", "lexico_chat", *flags, "--train-dictionary-if-missing", *QUESTION]
    log = root / "killed.log"
    with open(log, "wb") as stderr:  # a file, not a pipe: progress bars never block the process
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=dict(os.environ))
        deadline = time.monotonic() + 300
        while not (work / "layer_000.safetensors").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    kept = sorted(p.name for p in work.iterdir())
    assert {"config.json", "vectors.safetensors", "layer_000.safetensors"} <= set(kept) and not path.exists()
    first_layer = (work / "layer_000.safetensors").stat().st_mtime_ns
    code, out, err = _main(*flags, "--train-dictionary-if-missing", *QUESTION)
    assert code == 0, err
    done = len([name for name in kept if name.startswith("layer_")])
    assert f"{done} of 4 layers already done" in err
    assert "reading the corpus" not in err and "fitting layer 0 keys" not in err  # nothing redone
    resumed, uninterrupted = LexicoDictionary.load(path), LexicoDictionary.load(trained[0])
    assert resumed.meta.corpus == uninterrupted.meta.corpus  # the same settings (the corpus note records them)
    assert torch.equal(resumed.keys, uninterrupted.keys) and torch.equal(resumed.values, uninterrupted.values)
    assert out == trained[2]
    assert first_layer > 0 and not work.exists()
