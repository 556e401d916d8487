"""``python -m lexico_chat``: the same as the ``lexico-chat`` command."""

import sys

from lexico_chat.cli import main

sys.exit(main())
