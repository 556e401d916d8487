"""The TUI's pure helpers: byte formatting, status bar packing, slash-command parsing, train-command lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from lexico_chat.errors import LexicoError, MissingDictionaryError
from lexico_chat.memory import Memory
from lexico_chat.tui.commands import CommandLine, default_session_path
from lexico_chat.tui.format import describe, human_bytes, pack_segments, ratio_text, status_segments
from lexico_chat.tui.widgets.user_message import elide
from tests.tui_fake import empty_stats, fake_stats


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 << 29, "2.5 GiB"), (3 << 40, "3.0 TiB"),
     (5 << 50, "5120.0 TiB"), (None, "n/a")],
)  # fmt: skip
def test_human_bytes(n, text) -> None:
    assert human_bytes(n) == text


def test_ratio_follows_kv_fraction() -> None:
    assert ratio_text(fake_stats(kv_fraction=0.125)) == "12.5% of fp16 · 8.0× smaller"
    assert ratio_text(fake_stats(kv_fraction=1.0)) == "100.0% of fp16 · 1.0× smaller"
    assert ratio_text(fake_stats(kv_fraction=0.0)) == "0.0% of fp16 · inf× smaller"
    assert ratio_text(empty_stats()) == "—"  # an empty cache has no ratio (not "100.0% · 1.0×")
    assert "KV 0 B (fp16 0 B) │ — │ 0 compressed + 0 buffer tok" in " │ ".join(status_segments(empty_stats()))


def test_empty_cache_shows_no_ratio() -> None:
    empty = fake_stats(memory=Memory(), context_tokens=0)
    assert empty.kv_fraction is None and empty.times_smaller is None
    assert ratio_text(empty) == "—"


def test_pack_segments_breaks_between_segments_only() -> None:
    segments = status_segments(fake_stats())
    for width in (20, 60, 80, 120, 400):
        lines = pack_segments(segments, width)
        assert [part for line in lines for part in line.split(" │ ")] == segments
        assert all(len(line) <= width for line in lines if " │ " in line)
    assert len(pack_segments(segments, 400)) == 1


def test_command_line_parsing() -> None:
    assert CommandLine.parse("/load notes.txt What is it?").path_and_rest() == ("notes.txt", "What is it?")
    assert CommandLine.parse("/LOAD 'my notes.txt'").path_and_rest() == ("my notes.txt", "")
    assert CommandLine.parse('/save "a b.lexico"').path() == "a b.lexico"
    assert CommandLine.parse("/resume ~/s.lexico").path() == str(Path.home() / "s.lexico")
    assert CommandLine.parse("/system  Be   brief. ") == CommandLine("system", "Be   brief.")
    with pytest.raises(LexicoError, match="unknown command /nope; known commands: /load, /save"):
        CommandLine.parse("/nope")
    with pytest.raises(LexicoError, match=r"/load needs an argument: /load FILE \[question\]"):
        CommandLine.parse("/load").path_and_rest()
    with pytest.raises(LexicoError, match="unterminated quote"):
        CommandLine.parse("/load 'x.txt").path_and_rest()


def test_default_session_path(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    path = default_session_path(0)
    assert path.parent == tmp_path / "lexico-chat" / "sessions"
    assert path.name.startswith("session-19") and path.suffix == ".lexico"  # 1969 or 1970 by time zone


def test_errors_are_described_in_one_line() -> None:
    missing = MissingDictionaryError("no dictionary", model_id="m", atoms=8, command="lexico-chat x", estimate="1 min")
    assert describe(missing) == "no dictionary" and describe(LexicoError("bad path")) == "bad path"
    assert describe(ValueError("boom")) == "ValueError: boom"


def test_long_user_turns_are_elided() -> None:
    document = "\n".join(f"line {i}" for i in range(100))
    shown = elide(document, max_lines=10)
    head, tail = [f"line {i}" for i in range(5)], [f"line {i}" for i in range(95, 100)]
    assert shown.splitlines() == [*head, "… 90 more lines …", *tail]
    assert elide("x" * 50, max_chars=20) == "x" * 10 + "\n… 30 more characters …\n" + "x" * 10
    assert elide("short\ntext") == "short\ntext"
