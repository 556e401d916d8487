"""Bad input on the command line: one line on stderr, exit code 2, no traceback; what commands print
(results on stdout, progress bars on stderr); nothing imports the CLI back."""

import ast
import json
from pathlib import Path

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


def test_emit_prints_json_or_key_value_lines(capsys):
    from lexico_chat.output import emit

    result = {"tokens": 3, "rows": [{"s": 4}], "ppl": 1.5}
    emit(result, as_json=True)
    assert json.loads(capsys.readouterr().out) == result
    emit(result, as_json=False)
    assert capsys.readouterr().out.splitlines() == ["tokens: 3", 'rows: [{"s": 4}]', "ppl: 1.5"]


def test_no_library_module_imports_the_cli():
    """The CLI imports the evals and train_cli; none of them (nor any other module) imports it back."""
    package = Path(__file__).parent.parent / "lexico_chat"
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "__main__.py":  # `python -m lexico_chat`: the entry point itself
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            if "lexico_chat.cli" in names:
                offenders.append(str(path.relative_to(package)))
    assert offenders == []


def test_progress_bar_counts_units_across_stages(capsys):
    from lexico_chat.progress import ProgressBar

    with ProgressBar(10, "compare", unit="tok") as bar:
        bar.stage("full fp16")(4)
        update = bar.stage("lexico s=8")
        update(3)
        update(3)
        assert (bar.done, bar.total) == (10, 10)
    err = capsys.readouterr().err
    assert "compare: lexico s=8" in err and "10/10" in err
    assert capsys.readouterr().out == ""


def test_stage_bar_opens_one_bar_per_stage(capsys):
    from lexico_chat.progress import StageBar

    bar = StageBar()
    bar("collect", 4, 10)
    bar("collect", 10, 10)
    first = bar.bar
    bar("layer 0 keys rre 0.500", 1, 3)
    bar("layer 0 keys rre 0.400", 2, 3)
    assert bar.bar is not first and bar.key == "layer 0 keys"
    assert (bar.bar.done, bar.bar.total) == (2, 3)
    bar.close()
    assert bar.bar is None
    assert "layer 0 keys rre 0.400" in capsys.readouterr().err


def test_disabled_bars_print_nothing(capsys):
    from lexico_chat.progress import ProgressBar, StageBar

    with ProgressBar(5, "niah", disable=True) as bar:
        bar.stage("trials")(5)
    stages = StageBar(disable=True)
    stages("collect", 3, 3)
    stages.close()
    assert capsys.readouterr().err == ""


def test_the_chat_command_parses_without_importing_torch():
    """Only `lexico-chat eval …` builds the eval parsers (their modules import torch), so the chat UI opens
    at once and torch loads behind its loading indicator."""
    import subprocess
    import sys

    code = (
        "import sys; from lexico_chat.cli import build_parser; "
        "args = build_parser(['--sparsity', '8']).parse_args(['--sparsity', '8']); "
        "assert args.func.__name__ == 'run' and 'torch' not in sys.modules, sorted(sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    assert main(["eval", "omp-speed", "--help"]) == 0  # the eval parsers are there when asked for


def test_the_console_entry_exits_like_python_but_without_teardown(tmp_path):
    """``entry`` (the ``lexico-chat`` command) ends the process with os._exit to skip the interpreter's
    teardown of torch: a piped stdout still receives everything, a non-daemon thread still finishes first,
    atexit handlers still run, and the exit code is main's."""
    import subprocess
    import sys

    script = (
        "import atexit, threading, time; from lexico_chat.cli import exit_now\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "print('x' * 100000, end='')\n"
        "exit_now(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x" * 100000 + "thread done\natexit ran\n"
    usage = subprocess.run([sys.executable, "-m", "lexico_chat", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: lexico-chat") and usage.stdout.endswith("\n")
    bad = subprocess.run(
        [sys.executable, "-m", "lexico_chat", "--sparsity"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr
