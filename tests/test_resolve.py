"""``--model NAME``: a local path, then a Hugging Face cache folder by repo name (any case), then the embedded
default's name, then the table of well-known models, then the hub; mistakes in one line. ``lexico-chat
models`` and ``lexico-chat dictionaries`` list what is here."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lexico_chat.cli import main
from lexico_chat.dictionary import LexicoDictionary
from lexico_chat.lookup import dictionary_filename, user_dictionary_folder
from lexico_chat.resolve import DEFAULT_MODEL_ID, cached_models, default_gguf_path, resolve_model
from tests.conftest import build_tiny_model, random_dictionary
from tests.hf_cache import add_to_cache, tiny_model_folder


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("tiny") / "TinyName")


@pytest.fixture()
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("LEXICO_CHAT_HOME", str(tmp_path / "lexico"))
    return home


def _save_tiny_dictionary(model_id: str):
    """A random N=64 dictionary for ``model_id`` where the lookup finds it; returns its path."""
    random = random_dictionary(build_tiny_model("llama"), atoms=64)
    path = user_dictionary_folder() / dictionary_filename(model_id, 64)
    LexicoDictionary(random.keys, random.values, replace(random.meta, model_id=model_id)).save(path)
    return path


def _one_line(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_name_finds_the_cache_folder_in_any_case(hf_home, tiny_files):
    snapshot = add_to_cache(hf_home, "tiny-org/TinyName", tiny_files)
    add_to_cache(hf_home, "tiny-org/TinyName", tiny_files, revision="newer-but-not-main")
    for name in ("TinyName", "tinyname", "TINY-ORG/tinyname"):
        source = resolve_model(name)
        assert (source.kind, source.model_id, source.location) == ("hf-cache", "tiny-org/TinyName", str(snapshot))
    assert [m.model_id for m in cached_models()] == ["tiny-org/TinyName"]
    assert cached_models()[0].size_bytes == sum(p.stat().st_size for p in tiny_files.iterdir())


def test_local_path_comes_first(hf_home, tiny_files, monkeypatch):
    add_to_cache(hf_home, "tiny-org/TinyName", tiny_files)
    monkeypatch.chdir(tiny_files.parent)
    source = resolve_model("TinyName")  # ./TinyName exists: the folder wins over the cache
    assert (source.kind, source.location) == ("folder", "TinyName")


def test_embedded_default_and_table_names(hf_home):
    assert resolve_model(None).location == resolve_model("smollm2-135m-instruct").location == str(default_gguf_path())
    assert resolve_model(DEFAULT_MODEL_ID).kind == "default"
    source = resolve_model("Llama-3.2-3B-Instruct")
    assert (source.kind, source.model_id) == ("hub", "meta-llama/Llama-3.2-3B-Instruct")
    assert resolve_model("Qwen2.5-7B-Instruct").model_id == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("some-org/Some-Model").model_id == "some-org/Some-Model"


def test_ambiguous_name_lists_the_matches(hf_home, tiny_files, capsys):
    add_to_cache(hf_home, "org-a/TinyName", tiny_files)
    add_to_cache(hf_home, "org-b/tinyname", tiny_files)
    err = _one_line(capsys, ["--model", "TinyName", "--prompt", "hi"])
    assert "matches several models" in err and "org-a/TinyName, org-b/tinyname" in err


def test_unknown_name_and_offline_table_name(hf_home, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _one_line(capsys, ["--model", "NoSuchModel", "--prompt", "hi"])
    assert "unknown model 'NoSuchModel'" in err and str(hf_home / "hub") in err
    err = _one_line(capsys, ["--model", "Llama-3.2-3B-Instruct", "--prompt", "hi"])
    assert "'meta-llama/Llama-3.2-3B-Instruct'" in err and "unreachable" in err


def test_models_lists_cache_folders_with_size_and_dictionaries(hf_home, tiny_files, capsys):
    add_to_cache(hf_home, "tiny-org/TinyName", tiny_files)
    assert main(["models", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)["models"]}
    tiny = rows["tiny-org/TinyName"]
    assert tiny["dictionaries"] == [] and tiny["size_bytes"] > 100_000 and tiny["source"] == "Hugging Face cache"
    assert rows[DEFAULT_MODEL_ID]["dictionaries"] == [1024, 4096]  # the shipped files
    _save_tiny_dictionary("tiny-org/TinyName")
    assert main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny-org/TinyName"))
    assert "N=64" in line and "Hugging Face cache" in line


def test_dictionaries_lists_shipped_and_trained(hf_home, capsys):
    path = _save_tiny_dictionary("tiny-org/TinyName")
    (user_dictionary_folder() / "broken.safetensors").write_bytes(b"not a dictionary")
    assert main(["dictionaries", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["dictionaries"]
    trained = [r for r in rows if r["origin"].startswith("trained")]
    assert [r["path"] for r in trained] == [str(path)]  # the broken file is skipped
    assert trained[0]["atoms"] == 64 and trained[0]["size_bytes"] == path.stat().st_size
    shipped = {r["path"].rsplit("/", 1)[-1]: r for r in rows if r["origin"].startswith("shipped")}
    default = shipped["SmolLM2-135M-Instruct-N4096.safetensors"]
    assert default["key_space"] == "pre_rope" and default["train_sparsity"] == 8
    assert default["heldout"]["keys"]["8"] == pytest.approx(0.123, abs=0.001)
    assert "--dictionary only" in shipped["SmolLM2-135M-Instruct-N4096-postrope.safetensors"]["origin"]
    assert main(["dictionaries"]) == 0
    out = capsys.readouterr().out
    assert "8: 0.123/0.262" in out and str(path) in out
