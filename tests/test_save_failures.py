"""Saves that fail keep the conversation: one clear line naming the path and the cause, exit code 2, an earlier
file intact, no temporary file left behind (a killed save's is removed by the next save to the same folder),
and files made with the umask's permissions. The CLI refuses a bad ``--save`` target before the model loads;
the TUI keeps the session and offers another path; the server answers 500 with the cause."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lexico_chat.atomic import TEMP_SUFFIX, check_writable, write_atomic
from lexico_chat.engine.session_file import read_session_file
from lexico_chat.errors import SaveError
from tests.test_server_support import messages, tiny_engine, tiny_server
from tests.tiny_cli import (
    FLAGS,
    assert_one_line_error,
    run_cli,
    save_dictionary,
    save_model_folder,
    serve_tiny_model,
    tiny_loaded,
)
from tests.tui_fake import FakeEngine, make_app, pilot_test, ready, submit, wait_for

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a long line about the sea and the wind."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(LoadedModel, dictionary path, model folder) of a tiny Llama."""
    folder = tmp_path_factory.mktemp("tiny")
    loaded = tiny_loaded()
    return loaded, save_dictionary(loaded, folder), save_model_folder(loaded, folder)


def _cli(tiny, monkeypatch, capsys, *argv):
    serve_tiny_model(monkeypatch, tiny[0])
    return run_cli(capsys, "--dictionary", tiny[1], *FLAGS, "--max-new-tokens", "4", *argv)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX))


def _bad_targets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    return {
        "unwritable": (Path("/proc/x.lexico"), "cannot create files in /proc"),
        "file as parent": (tmp_path / "a-file" / "s.lexico", "is a file, not a folder"),
        "directory as target": (tmp_path / "a-folder", "is a directory"),
    }


@pytest.mark.parametrize("case", ["unwritable", "file as parent", "directory as target"])
def test_a_bad_save_target_fails_before_the_model_loads(case, tmp_path, monkeypatch, capsys):
    target, cause = _bad_targets(tmp_path)[case]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the --save target was checked")

    monkeypatch.setattr("lexico_chat.models.load_model", no_model)
    code, out, err = run_cli(capsys, "--prompt", "Hi", "--save", target)
    assert_one_line_error(code, err, f"cannot save to {target}", cause)
    assert out == ""
    with pytest.raises(SaveError, match=cause):
        write_atomic(target, lambda tmp: Path(tmp).write_text("x"))
    assert not _temps(tmp_path)


def test_a_save_over_the_size_limit_keeps_the_old_file_and_no_temp(tiny, tmp_path, monkeypatch, capsys):
    """``ulimit -f``: the reply is printed, the save fails in one line (exit 2), the old file is untouched."""
    loaded, dictionary, folder = tiny
    good = tmp_path / "chat.lexico"
    assert _cli(tiny, monkeypatch, capsys, "--prompt", "Hi", "--save", good)[0] == 0
    before = good.read_bytes()
    command = [sys.executable, "-m", "lexico_chat.cli", "--model", folder, "--dictionary", dictionary, *FLAGS]
    command += ["--max-new-tokens", "4", "--prompt", PROMPT, "--save", good]
    limit = len(before) // 2  # the new file is larger than the old one; the limit lets neither be written

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, preexec_fn=limit_file_size, timeout=300
    )
    assert_one_line_error(run.returncode, run.stderr, f"cannot save to {good}: File too large")
    assert run.stdout == _cli(tiny, monkeypatch, capsys, "--prompt", PROMPT)[1]  # the reply came before the save
    assert good.read_bytes() == before and not _temps(tmp_path)
    assert _cli(tiny, monkeypatch, capsys, "--resume", good, "--prompt", "Again.", "--save", good)[0] == 0
    assert good.read_bytes() != before and not _temps(tmp_path)


def test_a_killed_save_leaves_the_old_file_and_the_next_save_removes_its_temp(tiny, tmp_path, monkeypatch, capsys):
    good = tmp_path / "chat.lexico"
    good.write_bytes(b"the earlier session")
    writer = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from lexico_chat.atomic import write_atomic\n"
        "def slow(tmp):\n"
        "    Path(tmp).write_bytes(b'half of a session')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "write_atomic(sys.argv[1], slow)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", writer, str(good)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "writing"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    stale = _temps(tmp_path)
    assert good.read_bytes() == b"the earlier session"
    assert len(stale) == 1 and stale[0].startswith(f".{good.name}.{process.pid}.")
    (tmp_path / f".other.{os.getpid()}.0123456789abcdef{TEMP_SUFFIX}").write_text("a live process's")
    assert _cli(tiny, monkeypatch, capsys, "--prompt", "Hi", "--save", good)[0] == 0
    assert _temps(tmp_path) == [f".other.{os.getpid()}.0123456789abcdef{TEMP_SUFFIX}"]  # only the dead one goes
    assert read_session_file(good).length > 0  # the new session replaced the earlier file


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_follow_the_umask(tiny, tmp_path, monkeypatch, capsys, umask, mode):
    previous = os.umask(umask)
    try:
        assert _cli(tiny, monkeypatch, capsys, "--prompt", "Hi", "--save", tmp_path / "s.lexico")[0] == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "s.lexico").stat().st_mode & 0o777 == mode


def test_check_writable_creates_nothing(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "s.lexico") == tmp_path / "new" / "deeper" / "s.lexico"
    assert check_writable(tmp_path / "s.lexico") == tmp_path / "s.lexico"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SaveError, match="cannot create files in /proc"):  # a missing folder under /proc
        check_writable("/proc/new/s.lexico")


@pilot_test
async def test_the_tui_keeps_the_session_and_offers_another_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    engine = FakeEngine(fail={"save": SaveError("cannot save to /proc/s.lexico: No such file or directory")})
    app = make_app(engine)
    async with app.run_test() as pilot:
        await ready(pilot)
        await submit(pilot, "/save /proc/s.lexico")
        await wait_for(pilot, lambda: app.errors() and not app.chat.working)
        assert app.errors() == [
            "/save: cannot save to /proc/s.lexico: No such file or directory. The conversation is kept: edit the "
            "path in the prompt and press Enter."
        ]
        offered = app.chat.query_one("PromptInput").text
        assert offered.startswith(f"/save {tmp_path / 'data' / 'lexico-chat' / 'sessions' / 'session-'}")
        engine.fail.clear()
        await pilot.press("enter")
        await wait_for(pilot, lambda: engine.methods().count("save") == 2 and not app.chat.working)
        assert engine.calls[-1] == ("save", offered.removeprefix("/save "))
        assert any(message.startswith("Session saved to") for _, message in app.notes)


def test_the_server_answers_a_failed_save_with_its_cause(tmp_path):
    (tmp_path / "a-file").write_text("x")
    sessions = tmp_path / "a-file" / "sessions"
    server = tiny_server(*tiny_engine(), tmp_path, session_dir=sessions)
    try:
        reply = server.openai().chat.completions.create(model="tiny-llama", messages=messages("Hi."), max_tokens=2)
        with server.http() as http:
            response = http.post("/v1/lexico/sessions/chat", json={"completion_id": reply.id})
            follow = messages("Hi.", reply.choices[0].message.content, "More.")
            again = server.openai().chat.completions.create(model="tiny-llama", messages=follow, max_tokens=2)
    finally:
        server.stop()
    error = response.json()["error"]
    assert response.status_code == 500 and error["code"] == "save_failed"
    assert (
        error["message"] == f"cannot save to {sessions / 'chat.lexico'}: {tmp_path / 'a-file'} is a file, not a folder"
    )
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # the conversation is still cached
