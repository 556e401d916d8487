"""Bad input on the command line: one line on stderr, exit code 2, no traceback."""

import pytest

from lexico_chat.cli import main
from tests.test_dictionary import _dictionary


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line_error(code, err, match):
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert match in err, err


def test_missing_model_path(capsys):
    _one_line_error(*_run(capsys, "--model", "/no/such/model", "--prompt", "hi"), "model path not found")


def test_missing_gguf_file(capsys):
    _one_line_error(*_run(capsys, "--model", "nothing-here.gguf", "--prompt", "hi"), "model file not found")


def test_offline_hub_id(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _one_line_error(*_run(capsys, "--model", "meta-llama/Llama-3.2-3B-Instruct", "--prompt", "hi"), "unreachable")


def test_corrupt_dictionary_fails_before_loading_the_model(capsys, tmp_path):
    bad = tmp_path / "d.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    _one_line_error(*_run(capsys, "--dictionary", str(bad), "--prompt", "hi"), "not a valid lexico dictionary")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--atoms", "1"], "--atoms must be in [2, 32767]"),
        (["--atoms", "40000"], "--atoms must be in [2, 32767]"),
        (["--sparsity", "0"], "--sparsity"),
        (["--sparsity", "65"], "--sparsity must be in [1, 64]"),
    ],
)
def test_train_ranges(capsys, tmp_path, argv, match):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text " * 100)
    args = ["train-dictionary", "--corpus", str(corpus), "--out", str(tmp_path / "d.safetensors"), *argv]
    _one_line_error(*_run(capsys, *args), match)


@pytest.mark.parametrize(
    "content,match", [(None, "text file not found"), (b"", "is empty"), (b"\x00\x00bin", "looks binary")]
)
def test_bad_corpus(capsys, tmp_path, content, match):
    corpus = tmp_path / "c.txt"
    if content is not None:
        corpus.write_bytes(content)
    args = ["train-dictionary", "--corpus", str(corpus), "--out", str(tmp_path / "d.safetensors")]
    _one_line_error(*_run(capsys, *args), match)


def test_empty_corpus_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["train-dictionary", "--corpus", str(tmp_path / "empty"), "--out", str(tmp_path / "d.safetensors")]
    _one_line_error(*_run(capsys, *args), "holds no .txt files")


def test_bad_document_fails_before_loading_the_model(capsys, tmp_path):
    _one_line_error(*_run(capsys, "--doc", str(tmp_path / "missing.txt"), "--prompt", "hi"), "text file not found")


def test_bad_sampling_values(capsys):
    _one_line_error(*_run(capsys, "--prompt", "hi", "--top-p", "1.5"), "--top-p")


@pytest.mark.slow
def test_dictionary_of_another_model(capsys, tmp_path):
    other = tmp_path / "other.safetensors"
    _dictionary(model_id="org/Tiny-Model").save(other)
    _one_line_error(*_run(capsys, "--dictionary", str(other), "--prompt", "hi"), "was made for another model")


@pytest.mark.slow
def test_sparsity_above_head_dim(capsys, tmp_path):
    from lexico_chat.dictionary import LexicoDictionary

    path = tmp_path / "id.safetensors"
    LexicoDictionary.identity("HuggingFaceTB/SmolLM2-135M-Instruct", 30, 3, 64).save(path)
    _one_line_error(
        *_run(capsys, "--dictionary", str(path), "--sparsity", "65", "--prompt", "hi"), "--sparsity must be in [1, 64]"
    )
