"""Slash commands: their table, the parser of a typed line, and the command-palette provider."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from textual.command import DiscoveryHit, Hit, Hits, Provider

from lexico_chat.errors import LexicoError

__all__ = [
    "COMMANDS",
    "SlashCommand",
    "CommandLine",
    "SlashCommandProvider",
    "default_session_path",
    "help_markdown",
    "other_session_path",
]

DEFAULT_QUESTION = "Summarise this document."


@dataclass(frozen=True)
class SlashCommand:
    """One command: ``usage`` is shown in /help; ``needs_argument`` commands are completed in the prompt."""

    name: str
    usage: str
    help: str
    needs_argument: bool = False


COMMANDS = (
    SlashCommand("load", "/load FILE [question]", f"read a document, ask about it (default: {DEFAULT_QUESTION})", True),
    SlashCommand("save", "/save [FILE]", "save the session (default: a timestamped file, see below)"),
    SlashCommand("resume", "/resume FILE", "replace this session with a saved one", True),
    SlashCommand("clear", "/clear", "forget the conversation (keeps the system prompt)"),
    SlashCommand("system", "/system TEXT", "set the system prompt and start a new conversation", True),
    SlashCommand("stats", "/stats", "per-layer KV cache memory breakdown"),
    SlashCommand("help", "/help", "list commands and keys"),
    SlashCommand("quit", "/quit", "leave"),
)
_BY_NAME = {command.name: command for command in COMMANDS}

KEYS = (
    ("Enter", "send"),
    ("Ctrl+J (Shift+Enter where the terminal reports it)", "new line"),
    ("Up / Down on the first / last line", "recall earlier inputs"),
    ("Esc", "stop the reply in progress"),
    ("Tab", "focus the conversation (arrows, PageUp/PageDown scroll) and back"),
    ("Ctrl+P", "command palette"),
    ("Ctrl+Q", "quit"),
)


@dataclass(frozen=True)
class CommandLine:
    """A parsed ``/name args`` line; ``args`` is the stripped rest of the line."""

    name: str
    args: str

    @classmethod
    def parse(cls, text: str) -> CommandLine:
        """Parse ``/name args``; raise LexicoError naming the known commands for an unknown name."""
        head, _, args = text.strip().removeprefix("/").partition(" ")
        name = head.lower()
        if name not in _BY_NAME:
            known = ", ".join(f"/{command.name}" for command in COMMANDS)
            raise LexicoError(f"unknown command /{head}; known commands: {known}")
        return cls(name, args.strip())

    def require_args(self) -> str:
        if not self.args:
            raise LexicoError(f"/{self.name} needs an argument: {_BY_NAME[self.name].usage}")
        return self.args

    def path(self) -> str:
        """The whole argument as a path: surrounding quotes dropped, ``~`` expanded."""
        args = self.require_args()
        if len(args) > 1 and args[0] == args[-1] and args[0] in "'\"":
            args = args[1:-1]
        return os.path.expanduser(args)

    def path_and_rest(self) -> tuple[str, str]:
        """Split ``FILE rest`` (FILE may be quoted to contain spaces); ``~`` is expanded."""
        args = self.require_args()
        if args[0] in "'\"":
            end = args.find(args[0], 1)
            if end < 0:
                raise LexicoError(f"/{self.name}: unterminated quote in {args!r}")
            path, rest = args[1:end], args[end + 1 :]
        else:
            path, _, rest = args.partition(" ")
        return os.path.expanduser(path), rest.strip()


def default_session_path(now: float | None = None) -> Path:
    """``$XDG_DATA_HOME/lexico-chat/sessions/session-YYYYmmdd-HHMMSS.lexico`` (XDG default ~/.local/share)."""
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return data_home / "lexico-chat" / "sessions" / f"session-{stamp}.lexico"


def other_session_path(failed: Path | None, now: float | None = None) -> Path:
    """Where to offer saving after a save to ``failed`` did not work: the default timestamped path, or a file of
    that name in the home folder when the default itself failed."""
    default = default_session_path(now)
    if failed is not None and failed.parent == default.parent:
        return Path.home() / default.name
    return default


def help_markdown() -> str:
    """/help: the commands and keys as two Markdown lists."""
    where = default_session_path(0).parent
    if where.is_relative_to(Path.home()):
        where = "~" / where.relative_to(Path.home())
    lines = ["**Commands** (also in the command palette, Ctrl+P)", ""]
    lines += [f"- `{command.usage}`: {command.help}" for command in COMMANDS]
    lines += ["", "**Keys**", ""] + [f"- {key}: {what}" for key, what in KEYS]
    lines += ["", f"Quote a FILE that contains spaces. Sessions saved without a FILE go to `{where.as_posix()}/`."]
    return "\n".join(lines)


class SlashCommandProvider(Provider):
    """Slash commands in the command palette: argument-free ones run, the others fill in the prompt."""

    def _command(self, command: SlashCommand):
        chat = self.screen  # the ChatScreen, which lists this provider in its COMMANDS
        if command.needs_argument:
            return partial(chat.prefill_prompt, f"/{command.name} ")  # type: ignore[attr-defined]
        return partial(chat.run_command_line, f"/{command.name}")  # type: ignore[attr-defined]

    async def discover(self) -> Hits:
        for command in COMMANDS:
            yield DiscoveryHit(command.usage, self._command(command), help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in COMMANDS:
            score = matcher.match(command.usage)
            if score > 0:
                yield Hit(score, matcher.highlight(command.usage), self._command(command), help=command.help)
