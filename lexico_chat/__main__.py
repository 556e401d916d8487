"""``python -m lexico_chat``: the same as the ``lexico-chat`` command."""

from lexico_chat.cli import entry

entry()
